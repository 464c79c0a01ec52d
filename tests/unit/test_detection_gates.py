"""The live detection gates: boxes per image and mean confidence, canary against stable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from repo_manager.analysis import Outcome, ScrapeProvider, Snapshot, judge, readings
from repo_manager.detection_gates import Z_WITHOUT_SPREAD, DetectionWindow, box_count_z
from repo_manager.gates import LiveGates
from repo_manager.metrics import RouterMetrics
from repo_manager.rollout import AnalysisPlan, AnalysisStatus
from repo_manager.rollout.analysis_step import decide

GATES = LiveGates()


def window(counts: list[int], score: float = 0.8) -> DetectionWindow:
    boxes = np.asarray(counts, dtype=float)
    return DetectionWindow(
        images=float(len(counts)),
        boxes=float(boxes.sum()),
        boxes_squared=float((boxes**2).sum()),
        scores=float(boxes.sum() * score),
    )


def traffic(
    totals: Snapshot, version: str, counts: list[int], *, score: float = 0.8, ms: float = 5.0
) -> None:
    """Add requests that all succeeded in ``ms`` and found ``counts`` boxes, per image."""
    w = window(counts, score)
    for key, value in {
        "triton_success": w.images,
        "triton_duration_us": w.images * ms * 1000,
        "router_ok": w.images,
        "router_latency_sum": w.images * ms / 1000,
        "router_latency_count": w.images,
        "router_images": w.images,
        "router_boxes": w.boxes,
        "router_boxes_squared": w.boxes_squared,
        "router_scores": w.scores,
    }.items():
        per = totals.setdefault(key, {})
        per[version] = per.get(version, 0.0) + value


def scenes(seed: int, n: int, mean: float = 2.5) -> list[int]:
    return np.random.default_rng(seed).poisson(mean, n).tolist()


def test_a_blind_canary_is_many_standard_errors_from_stable() -> None:
    z = box_count_z(window([0] * 40), window(scenes(0, 400)))
    assert z is not None and z > 20


def test_a_canary_drawing_from_the_same_scenes_stays_within_three_standard_errors() -> None:
    within = [box_count_z(window(scenes(s, 60)), window(scenes(1000 + s, 600))) for s in range(50)]
    assert max(z for z in within if z is not None) < 3.5
    assert sum(z is not None and z > 3 for z in within) <= 1  # about 0.3% by design


def test_counts_without_any_spread_are_equal_or_infinitely_apart() -> None:
    assert box_count_z(window([2] * 20), window([2] * 50)) == 0.0
    assert box_count_z(window([0] * 20), window([2] * 50)) == Z_WITHOUT_SPREAD
    assert box_count_z(window([1]), window([2] * 50)) is None


def test_a_fast_error_free_blind_canary_fails_on_the_detection_gates_alone() -> None:
    before: Snapshot = {}
    now: Snapshot = {}
    traffic(now, "1", scenes(0, 200))
    traffic(now, "2", [0] * 40, ms=2.0)  # faster than stable, no error, sees nothing
    verdict = judge(now, before, stable="1", canary="2", gates=GATES)
    assert verdict.outcome is Outcome.FAIL
    failed = {g.name for g in verdict.gates if not g.passed}
    assert failed == {"max_box_count_z[router]"}
    assert "0.00 boxes/image on 40 canary images" in verdict.reason
    seen = readings(now, before, {"stable": "1", "canary": "2"})["router"]
    assert seen["canary"]["boxes_per_image"] == 0 and seen["stable"]["boxes_per_image"] > 2


def test_a_canary_that_sees_boxes_everywhere_fails_and_a_twin_passes() -> None:
    noisy: Snapshot = {}
    traffic(noisy, "1", scenes(0, 200))
    traffic(noisy, "2", scenes(1, 40, mean=12.0))
    assert judge(noisy, {}, stable="1", canary="2", gates=GATES).outcome is Outcome.FAIL
    twin: Snapshot = {}
    traffic(twin, "1", scenes(0, 200))
    traffic(twin, "2", scenes(1, 40))
    assert judge(twin, {}, stable="1", canary="2", gates=GATES).outcome is Outcome.PASS


def test_a_canary_losing_confidence_fails_the_confidence_gate() -> None:
    now: Snapshot = {}
    traffic(now, "1", scenes(0, 200), score=0.8)
    traffic(now, "2", scenes(1, 40), score=0.5)
    verdict = judge(now, {}, stable="1", canary="2", gates=GATES)
    assert {g.name for g in verdict.gates if not g.passed} == {"max_confidence_drop[router]"}


def test_too_few_canary_images_are_not_judged_on_detections() -> None:
    now: Snapshot = {}
    traffic(now, "1", scenes(0, 200))
    traffic(now, "2", [0] * 5)
    assert judge(now, {}, stable="1", canary="2", gates=GATES).outcome is Outcome.NO_DATA


def test_the_detection_gates_judge_every_reading_inside_their_window() -> None:
    """At a small weight each interval has few canary images: the window adds them up."""
    plan = AnalysisPlan(steps=(10, 50), gates=LiveGates(detection_window_s=60, min_requests=10))
    totals: Snapshot = {}
    status = AnalysisStatus(plan=plan)
    verdicts = []
    for second in (0, 20, 40, 60, 80, 100):
        if second:
            traffic(totals, "1", scenes(second, 60))
            traffic(totals, "2", [0] * 6)  # 6 blind canary images per interval
        snapshot = {k: dict(v) for k, v in totals.items()}
        step = decide(status, snapshot, stable="1", canary="2", weight=10, at=float(second))
        status = step.status
        verdicts.append(None if status.last is None else status.last.outcome)
        assert all(second - at <= 60 for at, _ in status.window)
    # Each interval alone has 6 canary images, fewer than min_requests: after the baseline
    # and one interval no verdict, then the window's 12, 18, 18, 18 images are judged.
    assert verdicts == [None, Outcome.NO_DATA] + [Outcome.FAIL] * 4
    assert status.last is not None and "on 18 canary images" in status.last.reason
    assert AnalysisStatus.from_json(status.to_json()) == status


def test_router_detect_counts_are_exported_and_read_back_per_version(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = RouterMetrics(registry)
    for boxes in (0, 2, 4):
        store.version("m", "2").detected(boxes, 0.5 * boxes)
    assert store.version("m", "2").detections == (3, 6, 20, 3.0)
    exposition = tmp_path / "metrics"
    exposition.write_bytes(generate_latest(registry))
    snapshot = ScrapeProvider([exposition.as_uri()]).snapshot("m")
    assert snapshot["router_images"] == {"2": 3.0}
    assert snapshot["router_boxes"] == {"2": 6.0}
    assert snapshot["router_boxes_squared"] == {"2": 20.0}
    assert snapshot["router_scores"] == {"2": 3.0}
