"""A golden set on disk: a folder of images with optional YOLO labels.

``images/x.png`` + ``labels/x.txt`` (the YOLO layout), or ``x.txt`` beside the image; the
labels' class ids are stable's (``validation`` maps each version's classes to them by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repo_manager.errors import GoldenSetError

__all__ = ["IMAGE_SUFFIXES", "GoldenImage", "load_golden_set", "read_labels"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


@dataclass(kw_only=True, frozen=True)
class GoldenImage:
    """One golden image and, when labelled, its boxes (xyxy pixels) and classes."""

    path: Path
    labels: Path | None


def _label_path(image: Path) -> Path | None:
    """YOLO convention (last ``images/`` -> ``labels/``), else a ``.txt`` beside the image."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[-2::-1].index("images")
        candidate = Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
        if candidate.is_file():
            return candidate
    beside = image.with_suffix(".txt")
    return beside if beside.is_file() else None


def load_golden_set(directory: str | Path) -> list[GoldenImage]:
    """Every image under ``directory`` (sorted), with its label file when there is one."""
    root = Path(directory)
    if not root.is_dir():
        raise GoldenSetError(f"golden set {root} is not a folder")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise GoldenSetError(f"golden set {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [GoldenImage(path=p, labels=_label_path(p.absolute())) for p in images]


def read_labels(path: Path | None, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """YOLO label file -> (xyxy pixel boxes [n, 4], classes [n]); none -> empty arrays."""
    if path is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            cls, cx, cy, w, h = (float(x) for x in line.split()[:5])
        except ValueError:
            raise GoldenSetError(f"{path}:{number}: not 'class cx cy w h'") from None
        rows.append(
            (
                cls,
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            )
        )
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    array = np.asarray(rows, dtype=np.float64)
    return array[:, 1:].astype(np.float32), array[:, 0].astype(np.int64)
