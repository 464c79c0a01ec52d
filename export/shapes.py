"""An offline detection dataset: filled rectangles and circles on noisy backgrounds.

A real detector is needed for tests and the demo, and nothing may be downloaded: this
draws images whose ground truth is known exactly, in YOLO format, in milliseconds.
Colours are random, so channel order (RGB/BGR) does not matter to a detector trained on
them. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ALL_CLASS_NAMES",
    "CLASS_NAMES",
    "ShapesImage",
    "generate_shapes_dataset",
    "generate_shapes_image",
    "write_shapes_split",
]

CLASS_NAMES = ("rectangle", "circle")
#: The classes a dataset of ``classes=3`` draws: a new class appended (a new defect type,
#: the most common reason to retrain), the first two as in every other dataset.
ALL_CLASS_NAMES = (*CLASS_NAMES, "triangle")
RECTANGLE, CIRCLE, TRIANGLE = 0, 1, 2
_MIN_SIZE, _MAX_SIZE = 0.18, 0.42  # object size as a fraction of the image side
_MIN_CONTRAST = 70.0  # mean absolute colour difference from the background


@dataclass(kw_only=True)
class ShapesImage:
    """One generated image (HxWx3 uint8) and its boxes (xyxy pixels) and class ids."""

    image: np.ndarray
    boxes: np.ndarray  # float32 [n, 4]
    classes: np.ndarray  # int64 [n]

    def yolo_labels(self) -> str:
        """The label file: ``class cx cy w h`` per line, normalised to [0, 1]."""
        height, width = self.image.shape[:2]
        lines = []
        for cls, (x1, y1, x2, y2) in zip(self.classes, self.boxes, strict=True):
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            w, h = (x2 - x1) / width, (y2 - y1) / height
            lines.append(f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        return "\n".join(lines) + ("\n" if lines else "")


def _overlaps(box: np.ndarray, others: list[np.ndarray], margin: float) -> bool:
    return any(
        box[0] < o[2] + margin
        and o[0] < box[2] + margin
        and box[1] < o[3] + margin
        and o[1] < box[3] + margin
        for o in others
    )


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    for _ in range(50):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        if np.abs(colour - background).mean() >= _MIN_CONTRAST:
            return colour
    return 255.0 - background  # always far enough from the background


def generate_shapes_image(
    *,
    imgsz: int = 160,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    max_objects: int = 3,
    classes: int = len(CLASS_NAMES),
) -> ShapesImage:
    """One image with 1..``max_objects`` non-overlapping shapes (from ``rng`` or ``seed``) of
    the first ``classes`` of ``ALL_CLASS_NAMES`` (2: the same draws as always)."""
    if not 1 <= classes <= len(ALL_CLASS_NAMES):
        raise ValueError(f"classes must be 1..{len(ALL_CLASS_NAMES)}, got {classes}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    background = rng.integers(0, 256, size=3).astype(np.float32)
    canvas = np.empty((imgsz, imgsz, 3), dtype=np.float32)
    canvas[:] = background
    # A soft gradient and pixel noise, so "background" is not one flat colour.
    ramp = np.linspace(-1.0, 1.0, imgsz, dtype=np.float32)
    canvas += rng.uniform(-25, 25) * ramp[None, :, None]
    canvas += rng.uniform(-25, 25) * ramp[:, None, None]
    yy, xx = np.mgrid[0:imgsz, 0:imgsz].astype(np.float32)

    boxes: list[np.ndarray] = []
    found: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(30):
            cls = int(rng.integers(0, classes))
            size = rng.uniform(_MIN_SIZE, _MAX_SIZE) * imgsz
            if cls == RECTANGLE:
                aspect = rng.uniform(0.5, 2.0)
                w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
                w, h = min(w, imgsz * 0.9), min(h, imgsz * 0.9)
            else:
                w = h = size
            x1 = rng.uniform(0, imgsz - w)
            y1 = rng.uniform(0, imgsz - h)
            box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)
            if not _overlaps(box, boxes, margin=2.0):
                break
        else:
            continue  # no free spot left: fewer objects
        colour = _contrasting_colour(rng, background)
        if cls == RECTANGLE:
            mask = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
        elif cls == TRIANGLE:  # apex at the top centre, base along the bottom edge
            depth = (yy + 0.5 - box[1]) / max(box[3] - box[1], 1.0)
            half = depth * (box[2] - box[0]) / 2
            centre = (box[0] + box[2]) / 2
            mask = (depth >= 0) & (depth <= 1) & (np.abs(xx + 0.5 - centre) <= half)
        else:
            cx, cy, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, w / 2
            mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r**2
        canvas[mask] = colour
        boxes.append(box)
        found.append(cls)

    canvas += rng.normal(0.0, rng.uniform(6, 20), size=canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return ShapesImage(
        image=image,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.array(found, dtype=np.int64),
    )


def write_shapes_split(
    root: Path, split: str, n: int, *, imgsz: int, seed: int, classes: int = len(CLASS_NAMES)
) -> None:
    """Write ``n`` images and labels under ``root/images/split`` and ``root/labels/split``."""
    import cv2

    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n):
        sample = generate_shapes_image(imgsz=imgsz, rng=rng, classes=classes)
        stem = f"{split}_{index:05d}"
        if not cv2.imwrite(str(images / f"{stem}.png"), sample.image):
            raise OSError(f"cannot write {images / stem}.png")
        (labels / f"{stem}.txt").write_text(sample.yolo_labels(), encoding="utf-8")


def generate_shapes_dataset(
    root: Path,
    n: int,
    imgsz: int = 160,
    seed: int = 0,
    *,
    n_val: int | None = None,
    classes: int = len(CLASS_NAMES),
) -> Path:
    """Write a train split of ``n`` images and a val split; return the ``data.yaml``.

    The val split (default: a quarter of ``n``, at least 16) uses a different seed, so
    validation measures generalisation rather than memory.
    """
    root = Path(root).absolute()
    n_val = max(16, n // 4) if n_val is None else n_val
    write_shapes_split(root, "train", n, imgsz=imgsz, seed=seed, classes=classes)
    write_shapes_split(root, "val", n_val, imgsz=imgsz, seed=seed + 1_000_003, classes=classes)
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(ALL_CLASS_NAMES[:classes]))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {json.dumps(str(root))}\ntrain: images/train\nval: images/val\nnames:\n{names}\n",
        encoding="utf-8",
    )
    return data_yaml
