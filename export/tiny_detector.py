"""Small YOLOv8 detectors made offline: an untrained one in seconds, a trained one in minutes.

Tests need real Ultralytics weights and nothing may be downloaded, so both are built from
the ``yolov8n.yaml`` that ships inside Ultralytics:

* ``make_untrained_detector``: random weights, saved as a loadable ``.pt`` (for export
  and serving tests, where only shapes and numerics matter);
* ``train_tiny_detector`` / ``python -m export.tiny_detector --out DIR``: trains on the
  generated shapes dataset (``export.shapes``) and writes ``DIR/detector.pt``, a detector
  that really finds rectangles and circles (15 epochs at 160 px on 160 images reach an
  mAP50 above 0.9 in about a minute on 2 CPU cores).

Ultralytics' run folders go to a temporary directory; ``DIR`` keeps only the weights,
the dataset (usable as golden images) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from export.shapes import (
    CLASS_NAMES,
    ShapesImage,
    generate_shapes_dataset,
    generate_shapes_image,
)
from export.weights import import_ultralytics

__all__ = [
    "CLASS_NAMES",
    "ShapesImage",
    "TrainingReport",
    "generate_shapes_dataset",
    "generate_shapes_image",
    "main",
    "make_untrained_detector",
    "train_tiny_detector",
]

MODEL_YAML = "yolov8n.yaml"  # bundled with Ultralytics: no download


@dataclass(kw_only=True)
class TrainingReport:
    """What a training run produced."""

    weights: Path
    map50: float
    map50_95: float
    seconds: float
    epochs: int
    imgsz: int
    images: int
    seed: int


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run Ultralytics from ``path``: stray files it drops land there, not in the repo."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _ultralytics_log_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("ultralytics")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _class_names(nc: int) -> dict[int, str]:
    if nc == len(CLASS_NAMES):
        return dict(enumerate(CLASS_NAMES))
    return {i: f"class{i}" for i in range(nc)}


def make_untrained_detector(path: Path, *, nc: int = 2, seed: int = 0, imgsz: int = 640) -> Path:
    """Save a YOLOv8n detector with random weights as an Ultralytics ``.pt`` (seconds).

    The checkpoint has the layout Ultralytics writes (FP16 model, ``train_args`` with
    ``imgsz`` as the training size), so it loads like real weights; the global torch RNG
    is left as it was.
    """
    import_ultralytics()
    import torch
    from ultralytics import __version__
    from ultralytics.nn.tasks import DetectionModel

    path = Path(path)
    with torch.random.fork_rng(), _ultralytics_log_level(logging.WARNING):
        torch.manual_seed(seed)
        model = DetectionModel(MODEL_YAML, nc=nc, verbose=False)
    model.names = _class_names(nc)
    checkpoint = {
        "date": datetime.now(UTC).isoformat(),
        "version": __version__,
        "model": deepcopy(model).half(),
        "ema": None,
        "train_args": {"task": "detect", "model": MODEL_YAML, "imgsz": imgsz},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def train_tiny_detector(
    out_dir: Path,
    *,
    epochs: int = 15,
    imgsz: int = 160,
    images: int = 160,
    seed: int = 0,
    batch: int = 8,
) -> TrainingReport:
    """Generate the shapes dataset in ``out_dir/dataset``, train, write ``detector.pt``.

    Tuned for a tiny budget (measured on 2 CPU cores, 15 epochs, 160 images at 160 px,
    seeds 0-2: mAP50 0.94-0.99 in about a minute). Ultralytics' defaults are for long
    runs: it accumulates gradients up to a nominal batch of 64 (``nbs``), i.e. one
    optimizer step per 8 batches here, and its warm-up spans 3 epochs; with both the
    same run stays below mAP50 0.2. So: one step per batch, AdamW at 3e-3, one warm-up
    epoch, and torch on every core (Ultralytics keeps one core free).
    """
    import_ultralytics()
    import torch
    from ultralytics import YOLO

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None

    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = out_dir / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)  # a rerun starts from a clean dataset
    data_yaml = generate_shapes_dataset(dataset, images, imgsz, seed)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiny-detector-") as tmp, _working_directory(Path(tmp)):
        model = YOLO(MODEL_YAML, task="detect")
        model.add_callback(
            "on_train_start", lambda _: torch.set_num_threads(threads or os.cpu_count() or 1)
        )
        model.train(
            data=str(data_yaml),
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            nbs=batch,  # an optimizer step per batch, no accumulation
            optimizer="AdamW",
            lr0=0.003,
            warmup_epochs=1,
            device="cpu",
            workers=0,
            pretrained=False,
            amp=False,  # the AMP check downloads a model
            plots=False,  # plots want a font download
            project=str(Path(tmp) / "runs"),
            name="train",
            exist_ok=True,
            seed=seed,
            deterministic=True,
            verbose=False,
        )
        trainer: Any = model.trainer
        best = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
        weights = out_dir / "detector.pt"
        shutil.copyfile(best, weights)
        metrics = dict(trainer.metrics or {})
    seconds = time.monotonic() - started

    report = TrainingReport(
        weights=weights,
        map50=float(metrics.get("metrics/mAP50(B)", float("nan"))),
        map50_95=float(metrics.get("metrics/mAP50-95(B)", float("nan"))),
        seconds=round(seconds, 1),
        epochs=epochs,
        imgsz=imgsz,
        images=images,
        seed=seed,
    )
    summary = {**asdict(report), "weights": str(weights), "class_names": list(CLASS_NAMES)}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return report


def _quietly(train: Callable[[], TrainingReport], log: Path) -> TrainingReport:
    """Run ``train`` with Ultralytics' output (its logger and progress bars) in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        log.open("w", encoding="utf-8") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        _ultralytics_log_level(logging.WARNING),
    ):
        return train()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.tiny_detector",
        description="Train a small YOLOv8n shapes detector offline; writes OUT/detector.pt.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--images", type=int, default=160, help="training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="one line per detector; Ultralytics' epoch log goes to OUT/train.log",
    )
    args = parser.parse_args(argv)
    train = functools.partial(
        train_tiny_detector,
        args.out,
        epochs=args.epochs,
        imgsz=args.imgsz,
        images=args.images,
        seed=args.seed,
        batch=args.batch,
    )
    if args.quiet:
        print(
            f"training a YOLOv8n shapes detector (seed {args.seed}, {args.epochs} epochs at "
            f"{args.imgsz} px) into {args.out} ...",
            flush=True,
        )
        report = _quietly(train, args.out / "train.log")
    else:
        report = train()
    print(
        f"wrote {report.weights}: mAP50 {report.map50:.3f}, mAP50-95 {report.map50_95:.3f}, "
        f"{report.seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
