"""Live gates on what a detector sees: boxes per image and mean confidence, canary vs stable.

A canary that answers fast and without errors but sees nothing (or boxes everywhere) passes
every gate on errors and latency; these gates judge the detections ``Router.detect`` counted
per version (``repo_manager_router_detect_images_total`` and its siblings).

Why a test of the window's means and not a band around stable's mean: box counts of single
images spread widely (on the shapes images of the suite 0 to 6 boxes, mean about 2.5), so a
band of 3 standard deviations around stable's mean often contains 0 and would pass a blind
canary. The difference of the two windows' *means* has a standard error of
``sqrt(var_c / n_c + var_s / n_s)``, which shrinks with the images seen: the gate fails when
the difference is more than ``max_box_count_z`` (3 by default) of them. The window spans
``detection_window_s`` (2 minutes by default) of readings, more than one interval, so a canary
at a small weight still sends enough images.

Traffic is split by a sticky key, so canary and stable see different cameras; the test
assumes both draw from the same mix of scenes, which holds for a random share of a fleet
and not for a chosen one (a cohort is compared with stable's traffic of the same cohort).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from repo_manager.gates import GateResult, LiveGates
from repo_manager.resource_gates import BASELINE_KEY, RESOURCE_KEYS

__all__ = [
    "DETECTION_KEYS",
    "DetectionWindow",
    "box_count_z",
    "counter_delta",
    "detection_gates",
    "window_readings",
    "window_start",
]

#: Snapshot keys (``analysis.QUERIES``) of the Routers' detection counters.
DETECTION_KEYS = ("router_images", "router_boxes", "router_boxes_squared", "router_scores")

#: The z value reported when neither version's counts vary at all but their means differ
#: (every canary image 0 boxes, every stable image 2): finite, so it fits JSON.
Z_WITHOUT_SPREAD = 1e6

#: What the readings of a window keep: the detection counters, and the servers' gauges the
#: memory gates judge over their own window.
WINDOW_KEYS = (*DETECTION_KEYS, *RESOURCE_KEYS, BASELINE_KEY)

Snapshot = Mapping[str, Mapping[str, float]]


def counter_delta(now: Snapshot, before: Snapshot, key: str, version: str) -> float:
    """A version's counter between two readings."""
    current = now.get(key, {}).get(version, 0.0)
    previous = before.get(key, {}).get(version, 0.0)
    # A counter that went down was reset (server or client restarted): count from zero.
    return current - previous if current >= previous else current


@dataclass(kw_only=True, frozen=True)
class DetectionWindow:
    """What one version's detections added up to between two readings."""

    images: float
    boxes: float
    boxes_squared: float
    scores: float

    @classmethod
    def between(cls, now: Snapshot, before: Snapshot, version: str) -> DetectionWindow:
        images, boxes, squared, scores = (
            counter_delta(now, before, key, version) for key in DETECTION_KEYS
        )
        return cls(images=images, boxes=boxes, boxes_squared=squared, scores=scores)

    @property
    def mean_boxes(self) -> float | None:
        return self.boxes / self.images if self.images else None

    @property
    def variance(self) -> float | None:
        """The sample variance of the per-image box counts (None below 2 images)."""
        if self.images < 2:
            return None
        spread = self.boxes_squared - self.boxes * self.boxes / self.images
        return max(spread, 0.0) / (self.images - 1)

    @property
    def mean_confidence(self) -> float | None:
        return self.scores / self.boxes if self.boxes else None


def box_count_z(canary: DetectionWindow, stable: DetectionWindow) -> float | None:
    """How many standard errors apart the two windows' mean boxes per image are (None: a
    window has fewer than 2 images)."""
    c_var, s_var = canary.variance, stable.variance
    if c_var is None or s_var is None:
        return None
    difference = abs(canary.boxes / canary.images - stable.boxes / stable.images)
    error = math.sqrt(c_var / canary.images + s_var / stable.images)
    if error == 0:
        return 0.0 if difference == 0 else Z_WITHOUT_SPREAD
    return difference / error


def detection_gates(
    now: Snapshot, before: Snapshot, *, stable: str, canary: str, gates: LiveGates
) -> list[GateResult]:
    """The detection gates over the window between two readings; none when the canary's
    Routers counted fewer than ``min_requests`` images (clients that do not call
    ``detect``, or too little traffic)."""
    c = DetectionWindow.between(now, before, canary)
    s = DetectionWindow.between(now, before, stable)
    if c.images < gates.min_requests:
        return []
    if s.images < gates.min_requests:
        detail = f"stable answered {s.images:.0f} images in the window"
        return [GateResult.of(gates, "max_box_count_z", None, detail, source="router")]
    means = (
        f"{c.mean_boxes:.2f} boxes/image on {c.images:.0f} canary images, "
        f"{s.mean_boxes:.2f} on {s.images:.0f} stable"
    )
    results = [GateResult.of(gates, "max_box_count_z", box_count_z(c, s), means, source="router")]
    c_conf, s_conf = c.mean_confidence, s.mean_confidence
    drop = None if c_conf is None or s_conf is None else s_conf - c_conf
    detail = (
        "a version found no box"
        if drop is None
        else f"mean confidence canary {c_conf:.3f} / stable {s_conf:.3f}"
    )
    results.append(GateResult.of(gates, "max_confidence_drop", drop, detail, source="router"))
    return results


def window_readings(
    kept: tuple[tuple[float, dict[str, dict[str, float]]], ...],
    *,
    at: float,
    reading: Mapping[str, Mapping[str, float]],
    seconds: float,
) -> tuple[tuple[float, dict[str, dict[str, float]]], ...]:
    """The detection counters and the servers' gauges (``resource_gates``) of the readings
    inside the last ``seconds`` (oldest first), this one (taken at unix time ``at``)
    included."""
    current = {key: dict(reading.get(key, {})) for key in WINDOW_KEYS if key in reading}
    return (*(k for k in kept if k[0] >= at - seconds), (at, current))


def window_start(
    kept: tuple[tuple[float, dict[str, dict[str, float]]], ...], *, seconds: float
) -> dict[str, dict[str, float]] | None:
    """The oldest reading of ``kept`` inside the last ``seconds`` before its newest, where
    the detection gates' window starts (None: only the newest is inside)."""
    at = kept[-1][0]
    inside = [reading for t, reading in kept[:-1] if t >= at - seconds]
    return inside[0] if inside else None
