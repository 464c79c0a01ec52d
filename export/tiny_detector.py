"""Small YOLO detectors made offline: an untrained one in seconds, a trained one in minutes.

Tests need real Ultralytics weights and nothing may be downloaded, so all are built from
the model yaml files that ship inside Ultralytics (``yolov8n.yaml`` by default):

* ``make_untrained_detector``: random weights, saved as a loadable ``.pt`` (for export
  and serving tests, where only shapes and numerics matter);
* ``train_tiny_detector`` / ``python -m export.tiny_detector --out DIR``: trains on the
  generated shapes dataset (``export.shapes``) and writes ``DIR/detector.pt``, a detector
  that really finds rectangles and circles (15 epochs at 160 px on 160 images reach an
  mAP50 above 0.9 in about a minute on 2 CPU cores);
* ``RECIPES`` (``--recipe NAME``): the detectors of other generations a canary test needs,
  trained on the same data: a YOLOv8n trained on one more class (``triangle``) and a
  YOLOv10n, both fine-tuned from the YOLOv8n (``--start-from``; a few epochs), and a
  YOLO26n trained from scratch (it shares almost no layer with a YOLOv8n; its one-to-one
  head needs 40 epochs here: at 8 it finds boxes on 4 of the 40 golden images).

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
    ALL_CLASS_NAMES,
    CLASS_NAMES,
    ShapesImage,
    generate_shapes_dataset,
    generate_shapes_image,
)
from export.weights import import_ultralytics

__all__ = [
    "CLASS_NAMES",
    "RECIPES",
    "Recipe",
    "ShapesImage",
    "TrainingReport",
    "cached_detector",
    "generate_shapes_dataset",
    "generate_shapes_image",
    "main",
    "make_untrained_detector",
    "train_tiny_detector",
]

MODEL_YAML = "yolov8n.yaml"  # bundled with Ultralytics: no download


@dataclass(kw_only=True, frozen=True)
class Recipe:
    """How one tiny detector is trained: the Ultralytics yaml it is built from, epochs, and
    how many of the shapes classes it learns (``export.shapes.ALL_CLASS_NAMES``)."""

    model: str = MODEL_YAML
    epochs: int = 15
    classes: int = len(CLASS_NAMES)
    images: int = 160
    #: A recipe whose trained weights this one starts from (every layer whose name and
    #: shape match; a new class count re-initialises only the class outputs).
    fine_tune: str | None = None
    #: Validate after every epoch (picks the best epoch); otherwise only after the last.
    validate_each_epoch: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.images < 1:
            raise ValueError(f"a recipe needs epochs and images >= 1, not {self}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return ALL_CLASS_NAMES[: self.classes]


_FINE_TUNED: dict[str, Any] = {"fine_tune": "yolov8n", "validate_each_epoch": False}

#: The detectors of the test suite and the demo, by name (``.cache/detector-NAME/``; the
#: default YOLOv8n keeps ``.cache/detector/``).
RECIPES = {
    "yolov8n": Recipe(),
    # Fine-tuned from the YOLOv8n (only the class outputs start afresh), validated once
    # at the end: the cost of CI's fresh clone (measured in the issue 22 note).
    "yolov8n-3class": Recipe(classes=3, epochs=3, images=64, **_FINE_TUNED),
    # Every layer a YOLOv10n shares with the YOLOv8n (150 tensors of the backbone) starts
    # trained: 8 epochs find boxes on 32 of the 40 golden images (40 from scratch).
    "yolov10n": Recipe(model="yolov10n.yaml", epochs=8, **_FINE_TUNED),
    "yolo26n": Recipe(model="yolo26n.yaml", epochs=40),
}


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
    model: str = MODEL_YAML
    class_names: tuple[str, ...] = CLASS_NAMES


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
    if nc <= len(ALL_CLASS_NAMES):
        return dict(enumerate(ALL_CLASS_NAMES[:nc]))
    return {i: f"class{i}" for i in range(nc)}


def _calibrate_batch_norm(model: Any, *, imgsz: int, images: int = 8) -> None:
    """Measure every BatchNorm's running mean and variance on generated images and on
    uniform noise (what the export's numerical check feeds), half of each: calibrated on
    shapes alone, noise saturated every score at 1.0 (measured)."""
    import numpy as np
    import torch

    shapes = np.stack(
        [generate_shapes_image(imgsz=imgsz, seed=s).image[..., ::-1] for s in range(images)]
    )
    noise = np.random.default_rng(0).integers(0, 256, shapes.shape)
    batch = np.concatenate([shapes, noise]).astype(np.float32)
    tensor = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()) / 255
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(tensor)
    model.eval()


def make_untrained_detector(
    path: Path,
    *,
    nc: int = 2,
    seed: int = 0,
    imgsz: int = 640,
    model_yaml: str = MODEL_YAML,
    class_bias: float | None = None,
) -> Path:
    """Save a detector with random weights, built from ``model_yaml`` (any generation
    Ultralytics ships, e.g. ``yolo26n.yaml``), as an Ultralytics ``.pt`` (seconds).

    The checkpoint has the layout Ultralytics writes (FP16 model, ``train_args`` with
    ``imgsz`` as the training size), so it loads like real weights; the global torch RNG
    is left as it was. ``class_bias``: the bias of every class output (Ultralytics starts
    it near -8, so an untrained model scores nothing above 0.001; 0 makes it score about
    0.5 everywhere: dense detections for tests that compare them). With it, BatchNorm's
    running statistics are also measured on a few generated images: the layers' fresh
    statistics shrink the features to nothing, so that every anchor scored the same to
    1e-7 (measured), and rounding alone would decide every NMS.
    """
    import_ultralytics()
    import torch
    from ultralytics import __version__
    from ultralytics.nn.tasks import DetectionModel

    path = Path(path)
    with torch.random.fork_rng(), _ultralytics_log_level(logging.WARNING):
        torch.manual_seed(seed)
        model = DetectionModel(model_yaml, nc=nc, verbose=False)
    if class_bias is not None:
        _calibrate_batch_norm(model, imgsz=min(imgsz, 160))
        with torch.no_grad():
            layers: Any = model.model
            head = layers[-1]
            for name, parameter in head.named_parameters():
                if "cv3" in name and name.endswith("bias") and parameter.shape[0] == nc:
                    parameter.fill_(class_bias)
    model.names = _class_names(nc)
    checkpoint = {
        "date": datetime.now(UTC).isoformat(),
        "version": __version__,
        "model": deepcopy(model).half(),
        "ema": None,
        "train_args": {"task": "detect", "model": model_yaml, "imgsz": imgsz},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def train_tiny_detector(
    out_dir: Path,
    *,
    epochs: int | None = None,
    imgsz: int = 160,
    images: int | None = None,
    seed: int = 0,
    batch: int = 8,
    recipe: Recipe | None = None,
    start_from: Path | None = None,
) -> TrainingReport:
    """Generate the shapes dataset in ``out_dir/dataset``, train, write ``detector.pt``
    (``recipe``: the model yaml and class count; its epochs unless ``epochs`` is given).

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

    recipe = recipe or Recipe()
    epochs = recipe.epochs if epochs is None else epochs
    images = recipe.images if images is None else images
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = out_dir / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)  # a rerun starts from a clean dataset
    data_yaml = generate_shapes_dataset(dataset, images, imgsz, seed, classes=recipe.classes)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiny-detector-") as tmp, _working_directory(Path(tmp)):
        model = YOLO(recipe.model, task="detect")
        if start_from is not None:
            model.load(str(start_from))  # every layer whose name and shape match
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
            pretrained=start_from is not None,  # False would drop the loaded weights
            amp=False,  # the AMP check downloads a model
            plots=False,  # plots want a font download
            project=str(Path(tmp) / "runs"),
            name="train",
            exist_ok=True,
            seed=seed,
            deterministic=True,
            val=recipe.validate_each_epoch,
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
        model=recipe.model,
        class_names=recipe.class_names,
    )
    summary = {**asdict(report), "weights": str(weights), "class_names": list(recipe.class_names)}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return report


def cached_detector(recipe: str, cache_root: Path, *, start_from: Path | None = None) -> Path:
    """The trained detector of ``recipe`` under ``cache_root`` (``detector-NAME/detector.pt``;
    the default YOLOv8n's ``detector/``), trained first if missing: once per machine, even
    with several test processes asking at once (they wait on a lock file). ``start_from``:
    the weights a fine-tuning recipe starts from (default: its base recipe's, cached here)."""
    import fcntl

    folder = cache_root / ("detector" if recipe == "yolov8n" else f"detector-{recipe}")
    weights = folder / "detector.pt"
    if weights.is_file():
        return weights
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / f".{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not weights.is_file():
            base = [] if start_from is None else ["--start-from", str(start_from)]
            main(["--out", str(folder), "--recipe", recipe, "--quiet", *base])
    return weights


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
        description="Train a small YOLO shapes detector offline; writes OUT/detector.pt.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="yolov8n",
        help="which detector: its yaml, classes and epochs (default yolov8n)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--images", type=int, default=None, help="default: the recipe's")
    parser.add_argument(
        "--start-from",
        type=Path,
        default=None,
        help="the weights a fine-tuning recipe starts from (default: its base recipe's "
        "detector beside OUT, trained first if missing)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="one line per detector; Ultralytics' epoch log goes to OUT/train.log",
    )
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    epochs = recipe.epochs if args.epochs is None else args.epochs
    start_from = args.start_from
    if recipe.fine_tune is not None and start_from is None:
        start_from = cached_detector(recipe.fine_tune, Path(args.out).absolute().parent)
    train = functools.partial(
        train_tiny_detector,
        args.out,
        epochs=epochs,
        imgsz=args.imgsz,
        images=args.images,
        seed=args.seed,
        batch=args.batch,
        recipe=recipe,
        start_from=start_from if recipe.fine_tune is not None else None,
    )
    if args.quiet:
        print(
            f"training a {args.recipe} shapes detector ({', '.join(recipe.class_names)}; seed "
            f"{args.seed}, {epochs} epochs at {args.imgsz} px) into {args.out} ...",
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
