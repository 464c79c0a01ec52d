"""Validation gates and the progressive analysis on a real detector in the real tritonserver.

Canaries that misbehave are made from the *published version folder's* ``model.py``
(the python-backend runner copied into every version): a wrapper appended to it sleeps or
refuses some inputs, and the version is reloaded. Production code has no test hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from repo_manager import Router
from repo_manager.modelconfig import parse_config
from repo_manager.names import versions_model_name
from repo_manager.triton import TritonFleet
from repo_manager.validation import run_golden_set
from tests.integration.conftest import CLI, CliResult, Stack
from tests.integration.manifests import reseal
from tests.integration.prometheus import Prometheus
from tests.integration.traffic import Traffic, client_traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = "shapes"

SLOW = """
import time as _time

_execute = TritonPythonModel.execute


def _slow_execute(self, requests):  # test canary: every batch takes {ms} ms longer
    _time.sleep({ms} / 1000.0)
    return _execute(self, requests)


TritonPythonModel.execute = _slow_execute
"""

FAILING = """
import zlib as _zlib

_execute = TritonPythonModel.execute


def _failing_execute(self, requests):  # test canary: refuses inputs whose crc32 % 3 == 0
    answers = _execute(self, requests)
    self._calls = getattr(self, "_calls", 0) + 1
    if self._calls <= 5:  # let the config's warm-up samples pass, or it never loads
        return answers
    for i, request in enumerate(requests):
        data = pb_utils.get_input_tensor_by_name(request, self.input_names[0]).as_numpy()
        if _zlib.crc32(data.tobytes()) % 3 == 0:
            answers[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError("canary bug"))
    return answers


TritonPythonModel.execute = _failing_execute
"""


def wrap_version(
    stack: Stack, version: str, code: str, *, model: str = MODEL, unload: bool = True
) -> None:
    """Append ``code`` to the version folder's model.py and have Triton reload it.

    ``unload=False`` while traffic flows: a load call re-initializes that version alone
    (its files grew; DESIGN.md) and stable keeps serving."""
    folder = stack.repository / versions_model_name(model)
    runner = folder / version / "model.py"
    runner.write_text(runner.read_text() + code)
    reseal(folder / version)  # published with this code (not changed after its publish)
    config = parse_config((folder / "config.pbtxt").read_bytes(), source="")
    fleet = TritonFleet([stack.url])
    try:
        if unload:  # the old instance must not linger
            fleet.servers[0]._client.unload_model(folder.name)
        fleet.apply(folder.name, config, ["1", version], timeout=120)
    finally:
        fleet.close()


def golden_images(golden: Path, n: int = 16) -> list[np.ndarray]:
    images = [cv2.imread(str(p)) for p in sorted(golden.glob("*.png"))[:n]]
    assert all(i is not None for i in images)
    return images


@contextmanager
def detect_traffic(router: Router, images: list[np.ndarray], threads: int = 3) -> Iterator[Traffic]:
    """Router.detect traffic over ``images`` from several threads, as fast as the machine
    lets them: the live analysis judges it and needs its minimum of canary requests in
    every interval."""
    with client_traffic(
        lambda i: router.detect(images[i % len(images)]).version, threads, pause=0.0
    ) as record:
        yield record


def history(stack: Stack) -> list[dict]:
    state = json.loads((stack.repository / f".repo-manager.{MODEL}.json").read_text())
    return state["history"]


def status(stack: Stack) -> dict:
    return json.loads(stack.cli("status", MODEL, "--json").stdout)


ROLLOUT = ["--steps", "25,50,100", "--interval", "2s", "--threshold", "2", "--drain-seconds", "1"]


def rollout(stack: Stack, router_metrics: str, *, check: bool = True) -> CliResult:
    """`repo-manager rollout` of MODEL reading Triton's and the Routers' metrics directly."""
    return stack.cli(
        "rollout",
        MODEL,
        *ROLLOUT,
        "--metrics-url",
        stack.server.metrics_url,
        "--metrics-url",
        router_metrics,
        check=check,
    )


# -- golden set ---------------------------------------------------------------------------


def test_map50_matches_ultralytics_val_of_the_same_weights_and_data(
    stack: Stack, trained_detector: Path, golden_set: Path, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    stack.publish(MODEL, "1", trained_detector)
    with Router(MODEL, url=stack.url, repository=str(stack.repository)) as router:
        report = run_golden_set(router, stable="1", candidate="1", golden=golden_set)

    data = golden_set.parents[1] / "data.yaml"
    # rect=False: val's rectangular batches pad each side by half a stride (160 -> 192),
    # another input than the served model's fixed 160x160; square letterbox is the same.
    # Left: val keeps a second class per box (multi-label NMS); measured 0.004 apart.
    metrics = YOLO(str(trained_detector)).val(
        data=str(data),
        imgsz=160,
        batch=8,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(tmp_path),
        name="val",
        workers=0,
        rect=False,
    )
    theirs50, theirs50_95 = float(metrics.box.map50), float(metrics.box.map)
    print(
        f"mAP50 ours {report.stable.map50:.4f} ultralytics {theirs50:.4f}; "
        f"mAP50-95 ours {report.stable.map50_95:.4f} ultralytics {theirs50_95:.4f}"
    )
    assert report.stable.map50 == pytest.approx(theirs50, abs=0.01)
    assert report.stable.map50_95 == pytest.approx(theirs50_95, abs=0.02)
    assert report.labelled == report.images == 40


def test_a_good_canary_passes_every_golden_gate_and_a_degraded_one_is_stopped_before_traffic(
    stack: Stack, trained_detector: Path, golden_set: Path, weights: Path, tmp_path: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector)
    images = golden_images(golden_set)
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository)) as router,
        detect_traffic(router, images, threads=2) as record,
    ):
        good = stack.publish(MODEL, "2", trained_detector, "--golden", str(golden_set))
        assert "published as canary at 10%" in good.stdout
        assert status(stack)["weights"] == {"1": 90, "2": 10}
        validated = json.loads(
            stack.cli("validate", MODEL, "2", "--golden", str(golden_set), "--json").stdout
        )
        assert validated["passed"] and all(g["passed"] for g in validated["gates"])
        assert validated["candidate"]["agreement"] == pytest.approx(1.0)
        stack.cli("promote", MODEL, "--drain-seconds", "1")

        bad = stack.publish(MODEL, "3", weights, "--golden", str(golden_set), check=False)
        assert bad.code == 1, bad.stderr
        assert "failed the golden gate" in bad.stderr and "max_map50_drop" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        time.sleep(0.5)
    assert record.failures == [] and len(record.served) > 0
    assert record.versions_since(0)["3"] == 0  # the degraded canary never saw a user
    doc = status(stack)
    assert doc["stable"] == "2" and doc["canary"] is None and doc["weights"] == {"2": 100}
    assert {v["version"]: v["state"] for v in doc["versions"]}["3"] != "READY"
    actions = [(t["action"], t["reason"]) for t in history(stack)]
    assert actions[-3][0] == "publish canary at 0%"
    assert actions[-2][0] == "rollback" and actions[-2][1].startswith("golden gate failed")


def test_golden_set_bad_input_exits_2_and_changes_nothing(
    stack: Stack, trained_detector: Path, tmp_path: Path
) -> None:
    from tests.integration.conftest import snapshot

    stack.publish(MODEL, "1", trained_detector)
    before = snapshot(stack.repository)
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (
        ["validate", MODEL, "1", "--golden", str(empty)],
        ["validate", MODEL, "1", "--golden", str(tmp_path / "missing")],
        ["validate", MODEL, "1", "--golden", str(empty), "--gate", "min_agreement=7"],
        ["rollout", MODEL, "--steps", "50,10"],
        ["rollout", MODEL, "--interval", "soon"],
    ):
        result = stack.cli(*args, check=False)
        assert result.code == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(stack.repository) == before


# -- progressive analysis -----------------------------------------------------------------


def test_a_good_canary_is_promoted_by_rollout(
    stack: Stack, trained_detector: Path, golden_set: Path, router_metrics: str
) -> None:
    stack.publish(MODEL, "1", trained_detector)
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository)) as router,
        detect_traffic(router, golden_images(golden_set)) as record,
    ):
        stack.publish(MODEL, "2", trained_detector)
        done = rollout(stack, router_metrics)
    assert "promoted by the analysis" in done.stdout
    assert record.failures == []
    doc = status(stack)
    assert doc["stable"] == "2" and doc["phase"] == "succeeded"
    assert doc["analysis"]["last"]["outcome"] == "pass"
    # Two copies of one model: a latency ratio over one 2 s interval can still cross 1.5 when
    # the tests beside this one load the machine in a burst (seen: 55.2 vs 36.3 ms, 1.519).
    # One such check below the threshold of 2 is what the threshold is for; every step must
    # still pass, in order, and no second failed check may follow the first.
    actions = [t["action"] for t in history(stack)]
    noise = [a for a in actions if a.startswith("analysis: check failed")]
    assert all(a.endswith("(1/2)") for a in noise), noise
    assert [a for a in actions if a not in noise][-7:] == [
        "analysis started at 25%",
        "analysis: baseline",
        "analysis: passed at 25%, now 50%",
        "analysis: passed at 50%, now 100%",
        "analysis: passed the last step at 100%",
        "promote",
        "promoted",
    ]


@pytest.mark.parametrize("kind", ["slow", "failing", "blind"])
def test_a_slow_failing_or_blind_canary_is_rolled_back_by_the_live_analysis(
    stack: Stack,
    trained_detector: Path,
    weights: Path,
    golden_set: Path,
    router_metrics: str,
    kind: str,
) -> None:
    """``blind``: an untrained YOLOv8n, as fast as stable and without a single error, that
    finds no box: only the detection gates can tell (no golden set is given)."""
    stack.publish(MODEL, "1", trained_detector)
    stack.publish(
        MODEL, "2", weights if kind == "blind" else trained_detector, "--canary-weight", "0"
    )
    if kind != "blind":
        wrap_version(stack, "2", SLOW.format(ms=60) if kind == "slow" else FAILING)
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository)) as router,
        detect_traffic(router, golden_images(golden_set)) as record,
    ):
        done = rollout(stack, router_metrics, check=False)
        time.sleep(0.5)
    assert done.code == 1, done.stderr
    assert "rolled back by the analysis" in done.stderr
    gate = {"slow": "max_latency_ratio", "failing": "max_error_rate", "blind": "max_box_count_z"}
    assert gate[kind] in done.stderr
    assert record.failures == []  # fallbacks to stable hid the canary's errors from users
    doc = status(stack)
    assert doc["phase"] == "rolled_back" and doc["weights"] == {"1": 100}
    assert doc["analysis"]["failed_checks"] == 2
    if kind == "blind":  # fast and error-free: the errors gates held
        judged = {g["name"]: g["passed"] for g in doc["analysis"]["last"]["gates"]}
        assert judged["max_box_count_z[router]"] is False
        assert judged["max_error_rate[router]"] and judged["max_error_rate[triton]"]
    actions = [t["action"] for t in history(stack)]
    assert actions[-2:] == ["rollback", "rolled back"]
    assert sum(a.startswith("analysis: check failed") for a in actions) == 2


# -- a real Prometheus server as the source ------------------------------------------------


def test_prometheus_going_away_mid_analysis_does_not_roll_back_a_healthy_canary(
    stack: Stack,
    trained_detector: Path,
    golden_set: Path,
    router_metrics: str,
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    prom = Prometheus(
        binary=prometheus_binary,
        workdir=tmp_path,
        targets=[stack.server.metrics_url, router_metrics],
    )
    stack.publish(MODEL, "1", trained_detector)
    stack.publish(MODEL, "2", trained_detector)
    prom.start()
    command = [
        *CLI,
        "--repository",
        str(stack.repository),
        "--url",
        stack.url,
        "rollout",
        MODEL,
        "--steps",
        "25,50,100",
        "--interval",
        "3s",
        "--threshold",
        "3",
        "--max-metrics-errors",
        "10",
        "--prometheus",
        prom.url,
        "--drain-seconds",
        "1",
    ]
    rollout: subprocess.Popen[str] | None = None
    try:
        with (
            Router(MODEL, url=stack.url, repository=str(stack.repository)) as router,
            detect_traffic(router, golden_images(golden_set)) as record,
        ):
            rollout = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "YOLO_OFFLINE": "1"},
            )
            deadline = time.monotonic() + 120
            while not any(t["action"].startswith("analysis: passed") for t in history(stack)):
                assert time.monotonic() < deadline and rollout.poll() is None
                time.sleep(0.2)
            prom.stop()  # the metrics source goes away mid-analysis
            while (
                sum(t["action"].startswith("analysis: metrics unavailable") for t in history(stack))
                < 2
            ):
                assert time.monotonic() < deadline and rollout.poll() is None
                time.sleep(0.2)
            assert status(stack)["phase"] == "analyzing"
            prom.start()  # back: the analysis carries on
            _out, err = rollout.communicate(timeout=120)
    finally:
        prom.stop()
        if rollout is not None and rollout.poll() is None:
            rollout.kill()
            rollout.wait(timeout=10)
    assert rollout.returncode == 0, err
    assert record.failures == []
    doc = status(stack)
    assert doc["phase"] == "succeeded" and doc["stable"] == "2"
    actions = [t["action"] for t in history(stack)]
    assert "rollback" not in actions
    failed = sum(a.startswith("analysis: check failed") for a in actions)
    assert doc["analysis"]["failed_checks"] == failed  # outages added none


# -- shadow traffic ------------------------------------------------------------------------


def test_shadow_traffic_compares_a_canary_no_user_sees(
    stack: Stack, trained_detector: Path, golden_set: Path
) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        value = REGISTRY.get_sample_value(name, {"model": MODEL, "version": "2", **labels})
        return value or 0.0

    stack.publish(MODEL, "1", trained_detector)
    stack.publish(MODEL, "2", trained_detector, "--canary-weight", "0")
    before = {
        s: sample("repo_manager_router_shadow_boxes_total", side=s)
        for s in ("reference", "shadow", "matched")
    }
    ok_before = sample("repo_manager_router_shadow_requests_total", outcome="ok")
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository), shadow=1.0) as router,
        detect_traffic(router, golden_images(golden_set), threads=2) as record,
    ):
        time.sleep(4)
    assert record.failures == [] and len(record.served) > 0
    assert set(record.versions_since(0)) == {"1"}  # no user request reached the canary
    assert sample("repo_manager_router_shadow_requests_total", outcome="ok") > ok_before
    boxes = {
        s: sample("repo_manager_router_shadow_boxes_total", side=s) - before[s] for s in before
    }
    assert boxes["reference"] > 0
    # The same weights: every mirrored detection matches stable's.
    assert 2 * boxes["matched"] / (boxes["reference"] + boxes["shadow"]) > 0.95


def test_a_failing_canary_is_rolled_back_on_shadow_traffic_before_any_user_sees_it(
    stack: Stack, trained_detector: Path, golden_set: Path, router_metrics: str
) -> None:
    stack.publish(MODEL, "1", trained_detector)
    stack.publish(MODEL, "2", trained_detector, "--canary-weight", "0")
    wrap_version(stack, "2", FAILING)
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository), shadow=1.0) as router,
        detect_traffic(router, golden_images(golden_set), threads=2) as record,
    ):
        done = stack.cli(
            "rollout",
            MODEL,
            "--steps",
            "0,50,100",
            "--interval",
            "2s",
            "--threshold",
            "2",
            "--drain-seconds",
            "1",
            "--metrics-url",
            router_metrics,
            check=False,
        )
    assert done.code == 1 and "max_error_rate[shadow]" in done.stderr, done.stderr
    assert record.failures == [] and set(record.versions_since(0)) == {"1"}
    assert status(stack)["phase"] == "rolled_back"
