"""The first rollout, end to end, against the real embedded tritonserver."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from repo_manager import Router
from tests.integration.conftest import IMGSZ, Stack
from tests.integration.traffic import Traffic, client_traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "yolov8n"


def image_input(seed: int = 0) -> list[grpcclient.InferInput]:
    size = int(IMGSZ)
    data = np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32)
    tensor = grpcclient.InferInput("images", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def status(stack: Stack) -> dict:
    return json.loads(stack.cli("status", MODEL, "--json").stdout)


@contextmanager
def traffic(router: Router, threads: int = 4) -> Iterator[Traffic]:
    """Router.infer traffic; every answer must carry the detector's output."""
    inputs = image_input()

    def send(_: int) -> str:
        result = router.infer(inputs)
        assert result.result.as_numpy("output0") is not None
        return result.version

    with client_traffic(send, threads) as record:
        yield record


def test_canary_gets_its_share_and_keys_stick(stack: Stack, weights: Path) -> None:
    stack.publish(MODEL, "1", weights)
    verbose = stack.publish(MODEL, "2", weights, "--verbose")
    # publish --verbose times each phase on stderr; stdout stays the one result line.
    for phase in ("export", "upload", "load + warm-up", "routing table"):
        assert re.search(
            rf"publish {MODEL} 2: {re.escape(phase)} done in \d+\.\d\d s", verbose.stderr
        )
    assert re.search(r"timings: export \d+\.\d\d s, upload .* \(total ", verbose.stderr)
    assert verbose.stdout.strip() == f"{MODEL} version 2 published as canary at 10%"

    doc = status(stack)
    assert doc["stable"] == "1" and doc["canary"] == "2"
    assert doc["weights"] == {"1": 90, "2": 10}
    assert doc["phase"] == "progressing"
    assert {v["version"]: v["state"] for v in doc["versions"]} == {"1": "READY", "2": "READY"}

    with Router(MODEL, url=stack.url, repository=str(stack.repository)) as router:
        inputs = image_input()
        n = 2000
        counts = Counter(router.infer(inputs).version for _ in range(n))
        share = counts["2"] / n
        tolerance = 4.5 * math.sqrt(0.1 * 0.9 / n)  # 4.5 sigma: flaky once in ~150,000 runs
        assert abs(share - 0.10) < tolerance, counts
        assert set(counts) == {"1", "2"}

        for key in (f"camera-{i}" for i in range(40)):
            first = router.infer(inputs, key=key).version
            assert all(router.infer(inputs, key=key).version == first for _ in range(5))


def test_zero_failed_requests_through_a_whole_rollout(stack: Stack, weights: Path) -> None:
    stack.publish(MODEL, "1", weights)
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository)) as router,
        traffic(router) as record,
    ):
        stack.publish(MODEL, "2", weights)
        stack.cli("set-weight", MODEL, "50")
        time.sleep(1.0)
        stack.cli("promote", MODEL)
        after_promote = time.monotonic()
        assert status(stack)["stable"] == "2"
        stack.publish(MODEL, "3", weights)
        time.sleep(1.0)
        stack.cli("rollback", MODEL)
        after_rollback = time.monotonic()
        time.sleep(1.0)

    assert record.failures == []
    served = record.versions_since(0)
    assert served["1"] > 0 and served["2"] > 0 and served["3"] > 0
    assert "1" not in record.versions_since(after_promote)
    assert "3" not in record.versions_since(after_rollback)
    assert set(record.versions_since(after_rollback)) == {"2"}

    doc = status(stack)
    assert doc["stable"] == "2" and doc["canary"] is None and doc["phase"] == "rolled_back"
    states = {v["version"]: v["state"] for v in doc["versions"]}
    assert states["2"] == "READY"
    assert states["1"] != "READY" and states["3"] != "READY"
    actions = [
        t["action"]
        for t in json.loads((stack.repository / ".repo-manager.yolov8n.json").read_text())[
            "history"
        ]
    ]
    assert actions == [
        "publish stable",
        "publish canary at 10%",
        "set-weight 50%",
        "promote",
        "promoted",
        "publish canary at 10%",
        "rollback",
        "rolled back",
    ]


def test_weight_change_from_another_process_reaches_a_live_router(
    stack: Stack, weights: Path
) -> None:
    stack.publish(MODEL, "1", weights)
    stack.publish(MODEL, "2", weights)
    with Router(MODEL, url=stack.url, repository=str(stack.repository)) as router:
        assert router.table.weights == {"1": 90, "2": 10}
        stack.cli("set-weight", MODEL, "30")
        returned = time.monotonic()
        while router.table.weights != {"1": 70, "2": 30}:
            assert time.monotonic() - returned < 1.0, "Router did not follow within 1 s"
            time.sleep(0.01)


def test_reconcile_restores_a_restarted_triton_mid_rollout(stack: Stack, weights: Path) -> None:
    stack.publish(MODEL, "1", weights)
    stack.publish(MODEL, "2", weights)
    stack.cli("set-weight", MODEL, "40")
    with Router(MODEL, url=stack.url, repository=str(stack.repository)) as router:
        inputs = image_input()
        assert router.infer(inputs).version in {"1", "2"}

        stack.restart(kill=True)
        assert {v["state"] for v in status(stack)["versions"]} == {"UNLOADED"}

        report = stack.cli("reconcile", "--json")
        assert json.loads(report.stdout)[0]["desired"] == ["1", "2"]
        doc = status(stack)
        assert {v["version"]: v["state"] for v in doc["versions"]} == {"1": "READY", "2": "READY"}
        assert doc["weights"] == {"1": 60, "2": 40} and doc["phase"] == "progressing"

        # The same Router (no restart) serves both versions again.
        served = Counter(router.infer(inputs).version for _ in range(200))
        assert set(served) == {"1", "2"}

        # Reconciling again changes nothing.
        again = json.loads(stack.cli("reconcile", "--json").stdout)
        assert again[0]["actions"] == []


def test_policy_keeps_extra_versions_loaded_and_releases_them(stack: Stack, weights: Path) -> None:
    stack.publish(MODEL, "1", weights)
    stack.publish(MODEL, "2", weights)
    stack.cli("promote", MODEL, "--drain-seconds", "0.5")

    stack.cli("policy", MODEL, "--specific", "1")  # keep the old stable warm for a fast rollback
    states = {v["version"]: v["state"] for v in status(stack)["versions"]}
    assert states == {"1": "READY", "2": "READY"}
    assert status(stack)["weights"] == {"2": 100}  # loaded is not routed

    stack.cli("policy", MODEL, "--latest", "1")
    states = {v["version"]: v["state"] for v in status(stack)["versions"]}
    assert states["2"] == "READY" and states["1"] != "READY"

    refused = stack.cli("policy", MODEL, "--specific", "7", check=False)
    assert refused.code == 2 and "no version 7" in refused.stderr
