"""Checkpoints of models that are no served detector (segment, pose, OBB, classify,
RT-DETR), saved as Ultralytics saves one, with random weights (seconds, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: (yaml, the words of its one-line refusal)
NOT_SERVED = [
    ("yolov8n-seg.yaml", "a YOLO segment model, not a detector"),
    ("yolo11n-pose.yaml", "a YOLO pose model, not a detector"),
    ("yolo26n-obb.yaml", "a YOLO obb model, not a detector"),
    ("yolov8n-cls.yaml", "a YOLO classify model, not a detector"),
    ("yolov8n-rtdetr.yaml", "an RT-DETR detector is not supported"),
]


def untrained_checkpoint(
    path: Path, yaml: str, *, train_args: dict[str, Any] | None = None
) -> Path:
    """A checkpoint of ``yaml`` with random weights (``train_args`` default: imgsz 160)."""
    import torch
    from ultralytics.nn.tasks import (
        ClassificationModel,
        OBBModel,
        PoseModel,
        RTDETRDetectionModel,
        SegmentationModel,
        guess_model_task,
        yaml_model_load,
    )

    kinds: dict[str, Any] = {
        "segment": SegmentationModel,
        "pose": PoseModel,
        "obb": OBBModel,
        "classify": ClassificationModel,
    }
    task = guess_model_task(yaml_model_load(yaml))
    kind = RTDETRDetectionModel if "rtdetr" in yaml else kinds[task]
    model = kind(yaml, nc=2, verbose=False)
    model.names = {0: "rectangle", 1: "circle"}
    args = {"imgsz": 160} if train_args is None else train_args
    torch.save({"model": model.half(), "ema": None, "train_args": args}, path)
    return path
