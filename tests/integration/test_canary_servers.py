"""A canary limited to server 2 of a fleet of 2 real embedded tritonservers on one
repository: server 1 never loads it, no Router request sent to server 1 names it, the
weighted public name on server 1 answers every unpinned request from stable, reconcile
restores each server's own versions after a restart, and promote leaves both servers on
the new stable with no failed request under steady Router traffic; a cohort of a canary
limited to server 2 is answered there and nowhere else; a rollout in waves widens from
server 2 to every server on live analysis and promotes.

Stable is the trained tiny detector, the canary an untrained YOLOv8n: an answer equal to
one version's own ``model.onnx`` proves which version computed it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from repo_manager import Router
from repo_manager.names import versions_model_name
from repo_manager.server import EmbeddedTriton, ServerPorts
from repo_manager.transport import make_grpc_client
from tests.eventually import eventually
from tests.integration.conftest import (
    CLI,
    CliResult,
    judged_ahead_of_other_tests,
    publish_args,
    run_cli,
    serving_router_metrics,
)
from tests.integration.public_clients import (
    MODEL,
    RAW,
    VERSIONS,
    Reference,
    inputs,
    matches,
    request,
    unpinned,
)
from tests.integration.traffic import client_traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@dataclass(kw_only=True)
class LocalFleet:
    """Two embedded tritonservers on one repository folder, and the CLI against both."""

    repository: Path
    servers: list[EmbeddedTriton]

    @property
    def urls(self) -> list[str]:
        return [s.grpc_url for s in self.servers]

    def cli(self, *args: str, check: bool = True) -> CliResult:
        urls = [part for url in self.urls for part in ("--url", url)]
        command = [*CLI, "--repository", str(self.repository), *urls, *args]
        return run_cli(command, args, check=check, timeout=300)

    def restart(self, index: int) -> None:
        old = self.servers[index]
        old.stop()  # not killed: a killed server leaves its shared-memory regions behind
        self.servers[index] = EmbeddedTriton(
            self.repository, ports=old.ports, log_path=old.log_path
        )
        self.servers[index].start()
        self.servers[index].wait_ready(timeout=120)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """Shared by the module's tests, each with models of its own."""
    tmp_path = tmp_path_factory.mktemp("canary-servers")
    repository = tmp_path / "model_repository"
    repository.mkdir()
    servers = [
        EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=tmp_path / f"triton-{i}.log")
        for i in range(2)
    ]
    running = LocalFleet(repository=repository, servers=servers)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout=120)
        yield running
    finally:
        for server in running.servers:  # the servers now: a restart replaced one
            server.stop()


def index(url: str, versions_model: str = VERSIONS) -> dict[str, str]:
    """Triton's repository index of the versions model on ``url``: version -> state (an
    unloaded version stays listed, UNAVAILABLE)."""
    with grpcclient.InferenceServerClient(url) as client:
        found = client.get_model_repository_index(as_json=True).get("models", [])
    return {m["version"]: m.get("state", "") for m in found if m["name"] == versions_model}


def ready(url: str, versions_model: str = VERSIONS) -> set[str]:
    return {v for v, state in index(url, versions_model).items() if state == "READY"}


class Recorded:
    """A real gRPC client that records (url, version) of every inference attempt the
    Router makes through it, failed attempts included (``RoutedResult.url`` names only
    the server that answered)."""

    def __init__(self, url: str, attempts: list[tuple[str, str]]) -> None:
        self.url, self.attempts = url, attempts
        self.client = make_grpc_client(url, None)

    def infer(self, model_name: str, inputs: Any, model_version: str = "", **kw: Any) -> Any:
        self.attempts.append((self.url, model_version))
        return self.client.infer(model_name, inputs, model_version=model_version, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class IndexWatch:
    """Reads server 1's index every 0.2 s in the background: every version it ever listed."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self.reads = url, set[str](), 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.wait(0.2):
            self.seen |= set(index(self.url))
            self.reads += 1

    def __enter__(self) -> IndexWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_a_canary_limited_to_server_2_never_reaches_server_1_and_promote_fails_nothing(
    fleet: LocalFleet, trained_detector: Path, weights: Path
) -> None:
    one, two = fleet.urls
    fleet.cli(*publish_args(MODEL, "1", trained_detector), *RAW)
    fleet.cli("policy", MODEL, "--unpinned", "weighted")
    unknown = fleet.cli(*publish_args(MODEL, "2", weights), "--servers", "triton-9", check=False)
    assert unknown.code == 2 and "--servers triton-9: no server of the fleet" in unknown.stderr
    assert not (fleet.repository / VERSIONS / "2").exists()

    with IndexWatch(one) as watch:
        published = fleet.cli(
            *publish_args(MODEL, "2", weights), "--canary-weight", "50", "--servers", two
        )
        assert f"only on {two}" in published.stdout
        assert index(one) == {"1": "READY"}  # only stable: 2 never listed there
        assert ready(two) == {"1", "2"}
        status = json.loads(fleet.cli("status", MODEL, "--json").stdout)
        assert status["canary_servers"] == [two]
        # Server 1's weighted public name itself sends everything to stable (not a canary
        # request that fails there and is retried on stable).
        routes = {row["url"]: row["public"] for row in status["servers"]}
        assert routes == {one: "weighted 1:100", two: "weighted 1:50,2:50"}
        refused = fleet.cli(
            "set-weight", MODEL, "60", "--exclude", two, "--servers", two, check=False
        )
        assert refused.code == 2 and "leave the canary no server" in refused.stderr
        stable, canary = Reference(fleet.repository, "1"), Reference(fleet.repository, "2")
        images = inputs(4, seed=11)

        # Unpinned requests through the weighted public name: on server 1 all stable.
        with grpcclient.InferenceServerClient(one) as client:
            answers = [unpinned(client, images[i % 4]) for i in range(40)]
        assert all(matches(a, stable(images[i % 4])) for i, a in enumerate(answers))
        with grpcclient.InferenceServerClient(two) as client:
            answers = [unpinned(client, images[i % 4]) for i in range(40)]
        from_canary = [matches(a, canary(images[i % 4])) for i, a in enumerate(answers)]
        assert 0 < sum(from_canary) < 40, "server 2's public name splits 50/50"

        # The Router: canary requests only to server 2, stable to both.
        routed: list[tuple[str, str | None]] = []
        attempts: list[tuple[str, str]] = []
        with Router(
            MODEL,
            [one, two],
            fleet.repository,
            client_factory=lambda url: Recorded(url, attempts),
        ) as router:

            def send(i: int) -> str:
                result = router.infer(request(images[i % 4]))
                routed.append((result.version, result.url))
                return result.version

            with client_traffic(send, threads=2) as traffic:
                assert eventually(lambda: len(routed) >= 60, timeout=60, every=0.1)
                fleet.restart(1)  # server 2 restarts: reconcile restores its own versions
                reconciled = fleet.cli("reconcile", MODEL)
                assert f"loaded 1,2 on {two}" in reconciled.stdout, reconciled.stdout
                assert ready(two) == {"1", "2"} and index(one) == {"1": "READY"}
                assert eventually(
                    lambda: sum(u == two for _, u in routed[-20:]) > 0, timeout=30, every=0.1
                )
                before_promote, failed_before = len(routed), list(traffic.failures)
                tried = list(attempts)
                assert "2" not in watch.seen and watch.reads > 5
                fleet.cli("promote", MODEL)
                assert eventually(lambda: len(routed) >= before_promote + 40, timeout=60, every=0.1)
        promote_failures = traffic.failures[len(failed_before) :]
    assert promote_failures == [], promote_failures[:5]
    assert failed_before == [], f"failed around server 2's restart: {failed_before[:5]}"

    limited = routed[:before_promote]
    assert (one, "2") not in tried, "a Router request sent to server 1 named the canary"
    assert ("2", one) not in limited
    assert ("2", two) in limited and ("1", one) in limited and ("1", two) in limited
    assert ready(one) == {"2"} and ready(two) == {"2"}
    assert [v for v, _ in routed[-10:]] == ["2"] * 10
    history = fleet.cli("history", MODEL).stdout
    assert f"canary servers: {two}" in history


def test_set_weight_widens_a_canary_to_every_server_and_narrows_it_back_without_a_failure(
    fleet: LocalFleet, trained_detector: Path, weights: Path
) -> None:
    one, two = fleet.urls
    model = "widened"
    versions_model = versions_model_name(model)
    fleet.cli(*publish_args(model, "1", trained_detector), *RAW)
    fleet.cli(*publish_args(model, "2", weights), "--canary-weight", "50", "--servers", two)
    assert index(one, versions_model) == {"1": "READY"}
    images = inputs(2, seed=5)
    attempts: list[tuple[str, str]] = []
    with (
        Router(
            model, [one, two], fleet.repository, client_factory=lambda u: Recorded(u, attempts)
        ) as router,
        client_traffic(lambda i: router.infer(request(images[i % 2])).version, 2) as traffic,
    ):
        assert eventually(lambda: len(attempts) >= 20, timeout=60, every=0.1)
        assert (one, "2") not in attempts
        widened = fleet.cli("set-weight", model, "50", "--servers", "all")
        assert "only on" not in widened.stdout
        # Loaded there before the table moved (the order: tests/unit/test_canary_servers.py).
        assert ready(one, versions_model) == {"1", "2"}
        mark = len(attempts)
        assert eventually(lambda: (one, "2") in attempts[mark:], timeout=30, every=0.1)
        fleet.cli("set-weight", model, "50", "--servers", two)
        assert ready(one, versions_model) == {"1"}
        mark = len(attempts)
        assert eventually(lambda: len(attempts) >= mark + 20, timeout=30, every=0.1)
        assert (one, "2") not in attempts[mark:]
    assert traffic.failures == [], traffic.failures[:5]


def test_a_cohort_of_a_canary_limited_to_server_2_is_answered_only_there(
    fleet: LocalFleet, trained_detector: Path, weights: Path
) -> None:
    """Both halves of the choice at once: who (``--cohort``) and where (``--servers``)."""
    one, two = fleet.urls
    model = "cohorted"
    fleet.cli(*publish_args(model, "1", trained_detector), *RAW)
    fleet.cli(*publish_args(model, "2", weights), "--servers", two, "--cohort", "line=3")
    assert index(one, versions_model_name(model)) == {"1": "READY"}
    image = inputs(1, seed=7)[0]
    attempts: list[tuple[str, str]] = []
    with Router(
        model, [one, two], fleet.repository, client_factory=lambda u: Recorded(u, attempts)
    ) as router:
        routed = [
            (line, router.infer(request(image), key=f"cam-{i}", attributes={"line": str(line)}))
            for i in range(100)
            for line in [i % 5 + 1]
        ]
    assert {(line, r.version) for line, r in routed} == {
        (1, "1"),
        (2, "1"),
        (3, "2"),
        (4, "1"),
        (5, "1"),
    }
    assert all(r.url == two for line, r in routed if line == 3)
    assert (one, "2") not in attempts


def test_a_rollout_in_waves_widens_from_server_2_to_every_server_and_promotes(
    fleet: LocalFleet, trained_detector: Path
) -> None:
    one, two = fleet.urls
    model = "waves"
    versions_model = versions_model_name(model)
    fleet.cli(*publish_args(model, "1", trained_detector), *RAW)
    fleet.cli(
        *publish_args(model, "2", trained_detector), *RAW, "--canary-weight", "0", "--servers", two
    )
    assert index(one, versions_model) == {"1": "READY"}
    images = inputs(2, seed=3)
    attempts: list[tuple[str, str]] = []
    with (
        judged_ahead_of_other_tests(os.getpid(), *(s.pid for s in fleet.servers)),
        serving_router_metrics() as metrics_url,
        Router(
            model, [one, two], fleet.repository, client_factory=lambda u: Recorded(u, attempts)
        ) as router,
        client_traffic(lambda i: router.infer(request(images[i % 2])).version, 2) as traffic,
    ):
        done = fleet.cli(
            "rollout", model, "--steps", f"servers={two}:50; servers=all:50,100",
            "--interval", "2s", "--threshold", "2", "--drain-seconds", "1",
            "--metrics-url", metrics_url, check=False,
        )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    assert traffic.failures == [], traffic.failures[:5]
    entries = json.loads(fleet.cli("history", model, "--json").stdout)
    moves = [(e["weights"].get("2"), e["servers"]) for e in entries if e["kind"] == "move"]
    # The first wave left server 1 without the canary, the second widened to it, then promote.
    assert (50, [two]) in moves and (100, None) in moves, moves
    first_wave = moves.index((50, [two]))
    widened = next(i for i, (w, servers) in enumerate(moves) if i > first_wave and servers is None)
    assert moves[widened][0] == 50, moves
    canary_on_one = [i for i, a in enumerate(attempts) if a == (one, "2")]
    assert canary_on_one, "the second wave sent the canary to server 1"
    # Before that, the first wave's canary traffic went to server 2 alone.
    assert attempts[: canary_on_one[0]].count((two, "2")) >= 10, attempts[: canary_on_one[0]]
    assert ready(one, versions_model) == {"2"} and ready(two, versions_model) == {"2"}
