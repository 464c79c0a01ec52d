"""Cohorts against the real embedded tritonserver: ``set-weight M W --cohort RULE`` sends the
requests whose attributes match RULE to the canary at W, through the Router and through the
weighted public name, the same rule in both; a time window follows the clock.

One server and one published model for the module (stable: the trained tiny detector,
canary: an untrained YOLOv8n, both raw); each test sets the cohort it needs first. The
Router reports the version it pinned (``RoutedResult.version``); the public name reports
none, so its answers are told apart by each version's pinned answer to the same image.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry

from repo_manager import Router
from repo_manager.metrics.router import RouterMetrics
from repo_manager.routing import RoutePlan
from repo_manager.state import RoutingTable, state_key
from tests.integration.conftest import Stack
from tests.integration.public_clients import MODEL, RAW, inputs, request
from tests.integration.test_weighted_public_name import Versions, within

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CANARY = "2"
#: Camera ``c`` stands on line ``c % 5 + 1``: 50 cameras, 10 per line.
CAMERAS = 50


def line_of(camera: int) -> int:
    return camera % 5 + 1


class Cohorts:
    """The module's stack with the model published, and a client for its public name."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.images = inputs(4, seed=21)
        self.versions = Versions(stack.url, self.images, ["1", CANARY])

    def set_weight(self, *args: str) -> str:
        return self.stack.cli("set-weight", MODEL, *args).stdout.strip()

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stack.cli("status", MODEL, "--json").stdout)
        return document

    def router(self, **options: Any) -> Router:
        return Router(MODEL, self.stack.url, self.stack.repository, **options)

    def public(self, client: grpcclient.InferenceServerClient, i: int, **parameters: Any) -> str:
        """The version that answered one unpinned request with these parameters."""
        x = i % len(self.images)
        result = client.infer(MODEL, request(self.images[x]), parameters=parameters)
        output = result.as_numpy("output0")
        assert output is not None
        return self.versions.of(x, output)


@pytest.fixture(scope="module")
def cohorts(shared: Stack, trained_detector: Path, weights: Path) -> Iterator[Cohorts]:
    first = shared.publish("other", "1", weights, "--cohort", "line=3", check=False)
    assert first.code == 2 and "--cohort needs a canary" in first.stderr, first
    shared.publish(MODEL, "1", trained_detector, *RAW)
    published = shared.publish(MODEL, CANARY, weights, "--cohort", "line=3")
    shown = "canary cohort 'line=3' at 100%, 0% of the others"
    assert published.stdout.strip().endswith(f"published as {shown}"), published.stdout
    shared.cli("policy", MODEL, "--unpinned", "weighted")
    yield Cohorts(shared)


def unpinned_counts(metrics_url: str) -> Counter[tuple[str, str]]:
    """The weighted public name's answered requests by (version, cohort)."""
    counts: Counter[tuple[str, str]] = Counter()
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("repo_manager_unpinned_requests_total{") and 'outcome="ok"' in line:
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            key = (labels["version"].strip('"'), labels.get("cohort", '""').strip('"'))
            counts[key] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_cohort_line_3_sends_every_line_3_request_and_no_other_to_the_canary(
    cohorts: Cohorts,
) -> None:
    said = cohorts.set_weight("100", "--cohort", "line = 3")
    assert said == f"{MODEL}: canary {CANARY} cohort 'line=3' at 100%, 0% of the others"
    document = cohorts.status()
    assert document["cohort"] == {"rule": "line=3", "weight": 100}
    assert document["public"]["version"] == "weighted 1:100,2:0 cohort 'line=3' at 100%"

    registry = CollectorRegistry()
    served: Counter[tuple[int, str]] = Counter()
    with cohorts.router(metrics=RouterMetrics(registry)) as router:
        for i in range(1000):
            camera = i % CAMERAS
            routed = router.infer(
                request(cohorts.images[i % 4]),
                key=f"cam-{camera}",
                attributes={"line": str(line_of(camera)), "device": "crane"},
            )
            output = routed.as_numpy("output0")
            assert output is not None and cohorts.versions.of(i % 4, output) == routed.version
            served[(line_of(camera), routed.version)] += 1
    assert served == Counter(
        {(3, CANARY): 200, (1, "1"): 200, (2, "1"): 200, (4, "1"): 200, (5, "1"): 200}
    )
    get = registry.get_sample_value
    ok = "repo_manager_router_requests_total"
    assert get(ok, {"model": MODEL, "version": CANARY, "cohort": "in", "outcome": "ok"}) == 200
    assert get(ok, {"model": MODEL, "version": "1", "cohort": "out", "outcome": "ok"}) == 800

    # The same rule through the weighted public name, attributes as request parameters.
    before = unpinned_counts(cohorts.stack.server.metrics_url)
    public: Counter[tuple[int, str]] = Counter()
    with grpcclient.InferenceServerClient(cohorts.stack.url) as client:
        for i in range(1000):
            camera = i % CAMERAS
            line: int | str = line_of(camera) if i % 10 == 0 else str(line_of(camera))
            version = cohorts.public(client, i, key=f"cam-{camera}", line=line)
            public[(line_of(camera), version)] += 1
    assert public == served
    after = unpinned_counts(cohorts.stack.server.metrics_url)
    assert after - before == Counter({(CANARY, "in"): 200, ("1", "out"): 800})


def test_weight_50_inside_the_cohort_splits_line_3_and_keeps_each_camera_on_one_version(
    cohorts: Cohorts,
) -> None:
    said = cohorts.set_weight("50", "--cohort", "line=3")
    assert said == f"{MODEL}: canary {CANARY} cohort 'line=3' at 50%, 0% of the others"
    inside = {"line": "3"}
    with cohorts.router() as router:
        drawn = [
            router.infer(request(cohorts.images[k % 4]), key=f"line3-cam-{k}", attributes=inside)
            for k in range(300)
        ]
        canary = sum(r.version == CANARY for r in drawn)
        assert within(canary, 300, 0.5), canary
        for k in range(0, 300, 30):  # sticky: the same camera, the same version, every time
            again = {
                router.infer(
                    request(cohorts.images[0]), key=f"line3-cam-{k}", attributes=inside
                ).version
                for _ in range(4)
            }
            assert again == {drawn[k].version}, k
        others = Counter(
            router.infer(
                request(cohorts.images[0]), key=f"cam-{k}", attributes={"line": "1"}
            ).version
            for k in range(50)
        )
        assert others == Counter({"1": 50})
        # The public name puts a key where the Router does: the same rule, the same split.
        with grpcclient.InferenceServerClient(cohorts.stack.url) as client:
            for k in range(0, 300, 30):
                seen = {cohorts.public(client, i, key=f"line3-cam-{k}", line="3") for i in range(3)}
                assert seen == {drawn[k].version}, k


def test_a_time_window_cohort_sends_matching_requests_to_the_canary_only_inside_the_window(
    cohorts: Cohorts,
) -> None:
    rule = "hour in 22..6 tz Europe/Berlin and device=crane"
    cohorts.set_weight("100", "--cohort", rule)
    berlin = dt.timezone(dt.timedelta(hours=1))  # January: UTC+1
    now = [dt.datetime(2026, 1, 15, 23, 30, tzinfo=berlin).timestamp()]

    def sent(router: Router, device: str) -> Counter[str]:
        return Counter(
            router.infer(
                request(cohorts.images[k % 4]), key=f"cam-{k}", attributes={"device": device}
            ).version
            for k in range(30)
        )

    with cohorts.router(clock=lambda: now[0]) as router:
        assert sent(router, "crane") == Counter({CANARY: 30})  # 23:30 in Berlin: inside
        assert sent(router, "gate") == Counter({"1": 30})
        now[0] = dt.datetime(2026, 1, 16, 6, 0, tzinfo=berlin).timestamp()  # the end: outside
        assert sent(router, "crane") == Counter({"1": 30})
        now[0] = dt.datetime(2026, 1, 16, 5, 59, tzinfo=berlin).timestamp()
        assert sent(router, "crane") == Counter({CANARY: 30})
        now[0] = dt.datetime(2026, 1, 16, 14, 0, tzinfo=berlin).timestamp()
        assert sent(router, "crane") + sent(router, "gate") == Counter({"1": 60})


def test_a_bad_rule_is_one_line_exit_2_and_changes_nothing_and_the_history_records_cohorts(
    cohorts: Cohorts,
) -> None:
    stack = cohorts.stack
    said = cohorts.set_weight("100", "--cohort", "line in (3,4)", "--others", "10")
    assert said.endswith("cohort 'line in (3,4)' at 100%, 10% of the others")
    document = (stack.repository / state_key(MODEL)).read_bytes()
    for bad in ("line=3 or line=4", "hour in 0..5 tz Mars/Olympus"):  # the rest: unit tests
        refused = stack.cli("set-weight", MODEL, "100", "--cohort", bad, check=False)
        assert refused.code == 2, refused
        assert refused.stderr.strip().count("\n") == 0 and "cohort rule" in refused.stderr
    refused = stack.cli("set-weight", MODEL, "10", "--others", "5", check=False)
    assert refused.code == 2 and "--cohort RULE" in refused.stderr
    assert (stack.repository / state_key(MODEL)).read_bytes() == document

    assert (
        cohorts.set_weight("20")
        == f"{MODEL}: canary {CANARY} cohort 'line in (3,4)' at 100%, 20% of the others"
    )
    assert (
        cohorts.set_weight("0", "--cohort", "-")
        == f"{MODEL}: canary {CANARY} at 0%, stable 1 at 100%"
    )
    cleared = cohorts.status()
    assert cleared["cohort"] is None and cleared["public"]["version"] == "weighted 1:100,2:0"

    entries = json.loads(stack.cli("history", MODEL, "--json").stdout)
    moves = [(e["action"], e["cohort"]) for e in entries if e["action"].startswith("set-weight")]
    cohort = {"rule": "line in (3,4)", "weight": 100}
    assert moves[-3:] == [
        ("set-weight cohort 'line in (3,4)' at 100%, 10% outside it", cohort),
        ("set-weight cohort 'line in (3,4)' at 100%, 20% outside it", cohort),
        ("set-weight 0%", None),
    ]
    # A table with the rule reaches the Router as it reaches the public name.
    table = RoutingTable.from_document(json.loads(document))
    assert RoutePlan.build(MODEL, table).choose("cam-1", {"line": "4"}) == CANARY


def test_a_public_name_whose_server_cannot_compile_the_rule_serves_everyone_by_the_weights(
    cohorts: Cohorts,
) -> None:
    cohorts.set_weight("100", "--cohort", "line=3")
    with grpcclient.InferenceServerClient(cohorts.stack.url) as client:
        original = client.get_model_config(MODEL, as_json=True)["config"]
        # A zone this server's tz database lacks (the manager refuses one it lacks itself).
        broken = json.loads(json.dumps(original))
        routing = json.loads(broken["parameters"]["routing"]["string_value"])
        routing["cohort"]["rule"] = "line=3 and hour in 0..24 tz Mars/Olympus"
        broken["parameters"]["routing"]["string_value"] = json.dumps(routing)
        try:
            client.load_model(MODEL, config=json.dumps(broken))
            assert client.is_model_ready(MODEL)
            seen = {cohorts.public(client, i, key=f"cam-{i}", line="3") for i in range(12)}
            assert seen == {"1"}  # nobody in the cohort; the model serves
        finally:
            client.load_model(MODEL, config=json.dumps(original))
        assert {cohorts.public(client, i, line="3") for i in range(4)} == {CANARY}
