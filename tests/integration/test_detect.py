"""Router.detect with a real trained detector served by the embedded tritonserver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.shapes import generate_shapes_image
from repo_manager import Router
from repo_manager.yolo import box_iou
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_detect_finds_the_drawn_shapes(stack: Stack, trained_detector: Path) -> None:
    stack.publish("shapes", "1", trained_detector)
    rng = np.random.default_rng(123)
    matched = total = 0
    with Router("shapes", url=stack.url, repository=str(stack.repository)) as router:
        for _ in range(40):
            sample = generate_shapes_image(imgsz=160, rng=rng)
            detections = router.detect(sample.image)
            assert detections.version == "1"
            assert set(detections.names.values()) <= {"rectangle", "circle"}
            for box, cls in zip(sample.boxes, sample.classes, strict=True):
                total += 1
                matched += any(
                    box_iou([box], [found])[0, 0] >= 0.5 and found_cls == cls
                    for found, found_cls in zip(detections.boxes, detections.class_ids, strict=True)
                )
    # The tiny detector reaches mAP50 ~0.8+: most drawn shapes must be found with their class.
    assert matched / total >= 0.6, (matched, total)


def test_detect_maps_boxes_back_to_the_original_image_size(
    stack: Stack, trained_detector: Path
) -> None:
    """A 320x480 image (letterboxed with padding) gives boxes in its own pixels."""
    stack.publish("shapes", "1", trained_detector)
    rng = np.random.default_rng(7)
    hits = total = 0
    with Router("shapes", url=stack.url, repository=str(stack.repository)) as router:
        for _ in range(10):
            sample = generate_shapes_image(imgsz=160, rng=rng)
            big = np.repeat(np.repeat(sample.image, 2, axis=0), 2, axis=1)  # 320 x 320
            edge = np.repeat(big[:, -1:], 160, axis=1)  # extend the right edge: 320 x 480
            detections = router.detect(np.concatenate([big, edge], axis=1))
            for box in sample.boxes * 2:
                total += 1
                hits += any(box_iou([box], [found])[0, 0] >= 0.5 for found in detections.boxes)
    assert hits / total >= 0.6, (hits, total)
