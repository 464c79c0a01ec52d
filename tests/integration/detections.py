"""Served detections compared with Ultralytics' own predict of the same ``.pt``."""

from __future__ import annotations

from typing import Any

from repo_manager.routing import Detections
from repo_manager.yolo import box_iou

#: Ultralytics' predict confidence; served detections are compared at it.
CONF = 0.25
#: A detection this close to ``CONF`` may be on either side of it in two runtimes.
EDGE = 0.01


def assert_same_detections(served: Detections, local: Any, where: str) -> int:
    """Same classes (by name), boxes IoU >= 0.9, one to one; a detection within ``EDGE``
    of the confidence threshold may be on one side only. Returns the detections matched."""
    boxes = local.boxes.xyxy.cpu().numpy()
    scores = local.boxes.conf.cpu().numpy()
    labels = [local.names[int(c)] for c in local.boxes.cls.tolist()]
    taken = [False] * len(labels)
    matched = 0
    for box, score, label in zip(served.boxes, served.scores, served.labels, strict=True):
        candidates = [
            (float(box_iou([box], [boxes[j]])[0, 0]), j)
            for j in range(len(labels))
            if not taken[j] and labels[j] == label
        ]
        iou, j = max(candidates, default=(0.0, -1))
        if iou >= 0.9:
            taken[j] = True
            matched += 1
            continue
        assert score < CONF + EDGE, f"{where}: served {label} {score:.3f} {box} not in predict"
    for j, was_taken in enumerate(taken):
        assert was_taken or scores[j] < CONF + EDGE, f"{where}: predict's {labels[j]} not served"
    return matched
