"""Every client safe: the public name answers unpinned requests from stable only, and no
load re-initializes a version that stays loaded (real embedded tritonserver).

Stable is the trained tiny detector, the canary an untrained YOLOv8n: their outputs differ
visibly, so an answer equal to one version's own ``model.onnx`` (run here in-process)
proves which version computed it. Re-initialization is read from Triton's own processes:
the python backend starts one stub per loaded version, and a new PID for a version that
stayed loaded means Triton initialized it again (a second copy in memory while it warms up).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.shapes import CLASS_NAMES, generate_shapes_image
from tests.integration.conftest import MotoServer, S3Fleet, Stack, running_fleet
from tests.integration.public_clients import (
    MODEL,
    RAW,
    SIZE,
    VERSIONS,
    UnpinnedTraffic,
    inputs,
    matches,
    published,
    request,
    unpinned,
)
from tests.integration.stubs import stub_pids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_unpinned_requests_equal_stables_own_onnx_at_10_and_50_percent_then_the_new_stables(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    stable, canary = published(stack, trained_detector, weights)
    images = inputs(20)
    # The two detectors really differ: an answer can only match one of them.
    assert not any(matches(stable(x), canary(x)) for x in images)
    with grpcclient.InferenceServerClient(stack.url) as client:
        for weight in ("10", "50"):
            if weight != "10":
                stack.cli("set-weight", MODEL, weight)
            answers = [unpinned(client, images[i % len(images)]) for i in range(200)]
            assert all(
                matches(a, stable(images[i % len(images)])) for i, a in enumerate(answers)
            ), f"an unpinned request was not answered by stable at {weight}%"
        stack.cli("promote", MODEL)
        answers = [unpinned(client, images[i % len(images)]) for i in range(200)]
        assert all(matches(a, canary(images[i % len(images)])) for i, a in enumerate(answers))
    status = json.loads(stack.cli("status", MODEL, "--json").stdout)
    assert status["versions_model"] == VERSIONS
    assert status["public"] == {"name": MODEL, "version": "2"}
    history = json.loads((stack.repository / f".repo-manager.{MODEL}.json").read_text())
    assert [t["public"] for t in history["history"]] == ["1", "1", "1", "1", "2"]


def test_no_unpinned_request_fails_through_a_rollout_and_a_restart_with_reconcile(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    stable, canary = published(stack, trained_detector, weights)
    with UnpinnedTraffic(stack.url, threads=3) as traffic:
        time.sleep(1.0)
        stack.cli("set-weight", MODEL, "50")
        time.sleep(1.0)
        stack.cli("promote", MODEL)
        time.sleep(1.0)
        stack.publish(MODEL, "3", trained_detector)
        time.sleep(1.0)
        stack.cli("rollback", MODEL)
        time.sleep(1.0)
        traffic.running.clear()  # the only server goes away: nothing can answer then
        time.sleep(0.5)
        stack.restart(kill=False)
        reconciled = stack.cli("reconcile", MODEL)
        assert "loaded 2" in reconciled.stdout, reconciled.stdout
        resumed = time.monotonic()
        traffic.running.set()
        time.sleep(2.0)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.sent > 50, traffic.sent
    after = [(x, out) for at, x, out in traffic.answers if at > resumed]
    assert after, "no request after the restart"
    assert all(matches(out, canary(traffic.images[x])) for x, out in after)
    # Every answer came from one of the two detectors that were ever stable.
    assert all(
        matches(out, stable(traffic.images[x])) or matches(out, canary(traffic.images[x]))
        for _, x, out in traffic.answers
    )


def test_versions_that_stay_loaded_keep_their_stub_processes_on_every_load_path(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    def pids() -> dict[str, int]:
        assert stack.server.pid is not None
        found = stub_pids(stack.server.pid)
        return {version: pid for (model, version), pid in found.items() if model == VERSIONS}

    stack.publish(MODEL, "1", trained_detector, *RAW)
    first = pids()
    stack.publish(MODEL, "2", weights)  # the canary loads and warms up beside stable
    after_canary = pids()
    assert after_canary["1"] == first["1"]
    stack.cli("set-weight", MODEL, "50")
    stack.cli("promote", MODEL)
    after_promote = pids()
    assert after_promote == {"2": after_canary["2"]}
    stack.publish(MODEL, "3", trained_detector)
    after_publish = pids()
    assert after_publish["2"] == after_canary["2"]
    stack.cli("policy", MODEL, "--all")  # loads 1 again beside 2 and 3
    after_policy = pids()
    assert {v: after_policy[v] for v in ("2", "3")} == after_publish
    stack.cli("rollback", MODEL)
    after_rollback = pids()
    assert {v: after_rollback[v] for v in ("1", "2")} == {v: after_policy[v] for v in ("1", "2")}
    # A server that lost the public name (unloaded by hand): reconcile loads both models
    # again, and the versions that were loaded stay as they are.
    with grpcclient.InferenceServerClient(stack.url) as client:
        client.unload_model(MODEL)
        deadline = time.monotonic() + 30
        while client.is_model_ready(MODEL) and time.monotonic() < deadline:
            time.sleep(0.1)
    reconciled = stack.cli("reconcile", MODEL)
    assert "loaded" in reconciled.stdout, reconciled.stdout
    assert pids() == after_rollback
    status = json.loads(stack.cli("status", MODEL, "--json").stdout)
    assert status["public"]["version"] == "2"


@pytest.fixture
def fleet2(moto: MotoServer, bucket: str, tmp_path: Path) -> Iterator[S3Fleet]:
    """Two tritonservers reading the same S3 repository."""
    with running_fleet(moto, bucket, tmp_path, 2) as running:
        yield running


def test_on_an_s3_fleet_of_two_no_load_re_initializes_a_loaded_version(
    fleet2: S3Fleet, trained_detector: Path, weights: Path
) -> None:
    def pids(server: int) -> dict[str, int]:
        pid = fleet2.servers[server].pid
        assert pid is not None
        found = stub_pids(pid)
        return {version: pid for (model, version), pid in found.items() if model == VERSIONS}

    def answers(url: str, version: str | None) -> list[np.ndarray]:
        with grpcclient.InferenceServerClient(url) as client:
            if version is None:
                return [unpinned(client, x) for x in images]
            served = [client.infer(VERSIONS, request(x), model_version=version) for x in images]
            return [np.asarray(r.as_numpy("output0")) for r in served]

    images = inputs(3, seed=2)
    fleet2.publish(MODEL, "1", trained_detector, *RAW)
    first = [pids(i) for i in range(2)]
    fleet2.publish(MODEL, "2", weights)
    after_canary = [pids(i) for i in range(2)]
    for url in fleet2.urls:
        public, one, two = answers(url, None), answers(url, "1"), answers(url, "2")
        assert all(
            matches(a, b) and not matches(a, c) for a, b, c in zip(public, one, two, strict=True)
        )
    fleet2.cli("promote", MODEL)
    after_promote = [pids(i) for i in range(2)]
    for server in range(2):
        assert after_canary[server]["1"] == first[server]["1"], f"server {server}"
        assert after_promote[server] == {"2": after_canary[server]["2"]}, f"server {server}"
    for url in fleet2.urls:
        public, two = answers(url, None), answers(url, "2")
        assert all(matches(a, b) for a, b in zip(public, two, strict=True))
    status = json.loads(fleet2.cli("status", MODEL, "--json").stdout)
    assert [s["public"] for s in status["servers"]] == ["2", "2"]


def test_ultralytics_own_client_on_the_public_name_gets_stables_classes_and_names(
    stack: Stack, trained_detector: Path, weights: Path
) -> None:
    from ultralytics import YOLO

    published(stack, trained_detector, weights)
    stack.cli("set-weight", MODEL, "50")
    local = YOLO(str(trained_detector), task="detect")
    remote = YOLO(f"grpc://{stack.url}/{MODEL}", task="detect")
    rng = np.random.default_rng(7)
    images = [generate_shapes_image(imgsz=SIZE, rng=rng).image for _ in range(10)]
    for image in images:
        mine = local.predict(image, imgsz=SIZE, verbose=False)[0]
        served = remote.predict(image, imgsz=SIZE, verbose=False)[0]
        assert sorted(served.boxes.cls.tolist()) == sorted(mine.boxes.cls.tolist())
        assert served.names == mine.names == dict(enumerate(CLASS_NAMES))
    assert sum(len(local.predict(x, imgsz=SIZE, verbose=False)[0].boxes) for x in images) > 0
