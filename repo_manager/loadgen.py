"""Synthetic client load through a Router (``repo-manager traffic``).

A rollout's analysis judges a canary on live traffic; where no real clients are attached
(the compose stack, a demo) this sends ``Router.detect`` requests at a steady rate, so
the Router's per-version metrics and Triton's fill exactly as real clients would fill them.
Random images by default (load only: a detector finds nothing on noise); recorded frames
(``--images DIR``) so that the live detection gates compare what each version sees.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from repo_manager.errors import InvalidInputError
from repo_manager.routing import Router

__all__ = ["LoadReport", "load_images", "run_load"]

#: Image files ``load_images`` reads from a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def load_images(folder: Path, *, limit: int = 256) -> list[npt.NDArray[np.uint8]]:
    """Up to ``limit`` BGR images of ``folder`` (sorted by name); bad input: one line."""
    import cv2

    if not folder.is_dir():
        raise InvalidInputError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = [
        np.asarray(image, dtype=np.uint8)
        for p in files
        if (image := cv2.imread(str(p))) is not None
    ]
    if not images:
        raise InvalidInputError(
            f"--images {folder}: no readable image ({', '.join(IMAGE_SUFFIXES)})"
        )
    return images


@dataclass(kw_only=True)
class LoadReport:
    """Requests served per version, failures, and the last failure's text."""

    served: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return sum(self.served.values()) + self.failures


def run_load(
    router: Router,
    *,
    rate: float,
    threads: int,
    imgsz: int,
    stop: threading.Event,
    images: list[npt.NDArray[np.uint8]] | None = None,
) -> LoadReport:
    """Send ``rate`` requests per second from ``threads`` threads until ``stop`` is set,
    cycling through ``images`` (default: 8 random ``imgsz`` images).

    A thread that falls behind does not burst to catch up: the rate is an upper bound.
    """
    if not images:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (imgsz, imgsz, 3), dtype=np.uint8) for _ in range(8)]
    period = threads / rate
    report = LoadReport()

    def client(offset: int) -> None:
        due = time.monotonic()
        i = offset
        while not stop.is_set():
            try:
                version = router.detect(images[i % len(images)]).version
                with report.lock:
                    report.served[version] += 1
            except Exception as exc:  # counted and shown: load keeps going through outages
                with report.lock:
                    report.failures += 1
                    report.last_error = str(exc).splitlines()[0] if str(exc) else repr(exc)
            i += threads
            due = max(due + period, time.monotonic() - period)
            stop.wait(max(0.0, due - time.monotonic()))

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return report
