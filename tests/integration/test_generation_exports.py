"""Every detector generation the installed Ultralytics builds exports into each contract,
and its graph's detections are Ultralytics' own predict of the same ``.pt`` in the same
head mode (no server: the graph is the one a version folder serves; serving is proven on
trained YOLOv8n, YOLOv10n and YOLO26n in ``test_generations.py``).

The checkpoints are built from Ultralytics' own yaml files with random weights and a class
bias of 0 (every anchor scores near 0.5, so every graph has detections to compare).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export import ExportOptions, export_model
from export.onnx_export import onnx_session
from export.shapes import generate_shapes_image
from export.tiny_detector import make_untrained_detector
from repo_manager import yolo
from repo_manager.contract import END2END, RAW
from repo_manager.routing import Detections
from tests.integration.detections import CONF, assert_same_detections

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SIZE = 64

#: (yaml, its generation's head mode in the end-to-end contract). ``make test`` exports one
#: generation of each head: YOLOv8 (NMS in the graph), YOLOv10 and YOLO26 (one-to-one head,
#: and their one-to-many head raw); the others are marked ``generations``.
GENERATIONS = [
    pytest.param("yolov3-tiny.yaml", "nms", marks=pytest.mark.generations),
    # v5u: the anchor-free YOLOv5 Ultralytics builds
    pytest.param("yolov5n.yaml", "nms", marks=pytest.mark.generations),
    pytest.param("yolov6n.yaml", "nms", marks=pytest.mark.generations),
    ("yolov8n.yaml", "nms"),
    pytest.param("yolov9t.yaml", "nms", marks=pytest.mark.generations),
    ("yolov10n.yaml", "one2one"),
    pytest.param("yolo11n.yaml", "nms", marks=pytest.mark.generations),
    pytest.param("yolo12n.yaml", "nms", marks=pytest.mark.generations),
    ("yolo26n.yaml", "one2one"),
]


def served_detections(onnx: Path, image: np.ndarray, contract: str) -> Detections:
    """What ``Router.detect`` makes of the graph's answer (same pre- and post-processing)."""
    tensor, info = yolo.preprocess(image, (SIZE, SIZE))
    (output,) = onnx_session(onnx).run(None, {"images": tensor})
    if contract == END2END:
        [(boxes, scores, ids)] = yolo.decode_end2end(output, conf=CONF)
    else:
        [(boxes, scores, ids)] = yolo.decode(output, conf=CONF, iou=0.7)
    return Detections(
        boxes=yolo.scale_boxes(boxes, info),
        scores=scores,
        class_ids=ids,
        version="1",
        class_names=("rectangle", "circle"),
    )


@pytest.mark.parametrize(("yaml", "mode"), GENERATIONS)
def test_every_generation_exports_and_detects_as_ultralytics_predicts(
    tmp_path: Path, yaml: str, mode: str
) -> None:
    from ultralytics import YOLO

    weights = make_untrained_detector(
        tmp_path / f"untrained-{Path(yaml).stem}.pt", model_yaml=yaml, imgsz=SIZE, class_bias=0.0
    )
    image = generate_shapes_image(imgsz=SIZE, seed=1).image
    contracts = [END2END] + ([RAW] if mode == "one2one" else [])  # raw v8..12: the old path
    for contract in contracts:
        options = ExportOptions(imgsz=SIZE, max_batch=2, contract=contract, export_cache=None)
        out = tmp_path / contract
        result = export_model(weights, out, model_name="m", options=options)
        assert result.manifest["head_mode"] == (mode if contract == END2END else "one2many")
        assert result.manifest["lineage"]["generation"] in yaml
        served = served_detections(result.version_dir / "model.onnx", image, contract)
        nms = False if result.manifest["head_mode"] == "one2one" else None
        local = YOLO(str(weights), task="detect").predict(
            image, imgsz=SIZE, conf=CONF, nms=nms, verbose=False
        )[0]
        assert len(served) > 0, f"{yaml} {contract}: nothing to compare"
        assert_same_detections(served, local, f"{yaml} {contract}")
