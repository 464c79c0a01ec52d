"""The export's numerical check of an end-to-end graph: detections compared as sets, where
rounding may only decide what lies at a list's edge or at an NMS near-tie."""

from __future__ import annotations

import numpy as np
import pytest

from export.onnx_export import compare_detections
from repo_manager.errors import ExportError


def rows(*detections: list[float], k: int = 10) -> np.ndarray:
    out = np.zeros((1, k, 6), np.float32)
    for i, detection in enumerate(detections):
        out[0, i] = detection
    return out


def test_the_same_detections_in_another_order_agree_and_report_their_differences() -> None:
    want = rows([10, 10, 50, 50, 0.9, 0], [60, 60, 90, 90, 0.6, 1])
    got = rows([60, 60, 90.001, 90, 0.6, 1], [10, 10, 50, 50, 0.90002, 0])
    boxes, scores = compare_detections(got, want, where="m.onnx")
    assert boxes == pytest.approx(0.001, abs=1e-5) and scores == pytest.approx(2e-5, abs=1e-6)


def test_a_missing_detection_of_clear_confidence_is_refused_naming_it() -> None:
    want = rows([10, 10, 50, 50, 0.9, 0], [60, 60, 90, 90, 0.6, 1])
    got = rows([10, 10, 50, 50, 0.9, 0])
    with pytest.raises(ExportError, match=r"misses a detection .*class 1, score 0\.6"):
        compare_detections(got, want, where="m.onnx")


def test_a_detection_of_another_class_or_place_is_refused() -> None:
    want = rows([10, 10, 50, 50, 0.9, 0])
    with pytest.raises(ExportError, match="misses a detection"):
        compare_detections(rows([10, 10, 50, 50, 0.9, 1]), want, where="m.onnx")
    with pytest.raises(ExportError, match="misses a detection"):
        compare_detections(rows([12, 10, 52, 50, 0.9, 0]), want, where="m.onnx")


def test_rounding_may_decide_what_sits_at_the_confidence_floor_or_an_nms_near_tie() -> None:
    want = rows([10, 10, 50, 50, 0.9, 0], [0, 0, 5, 5, 0.0015, 1])  # at the 0.001 floor
    compare_detections(rows([10, 10, 50, 50, 0.9, 0]), want, where="m.onnx")
    # Box B overlaps the better box A of its class at IoU 0.7 (the graph's NMS threshold):
    # one runtime suppresses it, the other keeps it.
    a, b = [0, 0, 100, 100, 0.9, 0], [0, 0, 100, 70, 0.5, 0]
    compare_detections(rows(a), rows(a, b), where="m.onnx")
    compare_detections(rows(a, b), rows(a), where="m.onnx")
