"""Typed gate bounds for judging a canary, and the verdict of one gate.

Bounds are plain dataclass fields (like argo-rollouts' ``analysis_types.go``): each field
documents its default, overrides are converted field by field to the field's type
(``--gate NAME=VALUE``), the gates check every bound's range themselves when made (from
options or from a state document alike), and nothing is ever evaluated as an expression.

``GoldenGates`` judge a golden-set run before any traffic (``validate``, ``publish
--golden``); ``LiveGates`` judge live per-version figures at each analysis step
(``rollout``, ``publish --auto``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from repo_manager.errors import InvalidGateError

__all__ = ["GateResult", "GoldenGates", "LiveGates", "parse_gate_overrides"]

#: Each bound's allowed range (inclusive), by field name.
_RANGES: dict[str, tuple[float, float]] = {
    "max_map50_drop": (0.0, 1.0),
    "max_map50_95_drop": (0.0, 1.0),
    "min_agreement": (0.0, 1.0),
    "max_latency_ratio": (1.0, 1000.0),
    "max_error_rate": (0.0, 1.0),
    "min_stable_map50": (0.0, 1.0),
    "min_requests": (1, 1_000_000),
    "max_box_count_z": (0.5, 1000.0),
    "max_confidence_drop": (0.0, 1.0),
    "detection_window_s": (1.0, 3600.0),
    "max_p99_ratio": (1.0, 1000.0),
    "max_p99_ms": (0.0, 600_000.0),
    "max_memory_share": (0.01, 1.0),
    "memory_window_s": (1.0, 3600.0),
    "max_resident_growth": (0.0, 1000.0),
}


def _check_ranges(gates: GoldenGates | LiveGates) -> None:
    """Every bound finite and within its field's range (the one check, wherever it came from)."""
    for f in fields(gates):
        value = getattr(gates, f.name)
        low, high = _RANGES[f.name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high:
            raise InvalidGateError(f"gate {f.name}={value} outside {low:g}..{high:g}")


@dataclass(kw_only=True, frozen=True)
class GoldenGates:
    """Bounds on a golden-set comparison of canary against stable."""

    #: Largest allowed drop of mAP50 (stable minus canary, absolute). Default 0.05.
    #: Skipped when the golden set has no labels.
    max_map50_drop: float = 0.05
    #: Largest allowed drop of mAP50-95 (stable minus canary, absolute). Default 0.05.
    max_map50_95_drop: float = 0.05
    #: Lowest allowed agreement of canary detections with stable's (F1 of matched boxes,
    #: same class, IoU >= 0.5, confidence >= 0.25; stable is the reference). Default 0.8.
    min_agreement: float = 0.8
    #: Highest allowed ratio of canary p50 latency to stable p50 latency. Default 2.0.
    #: p50, not p95: a golden set is small and a 2-core machine's tail is noise.
    max_latency_ratio: float = 2.0
    #: Highest allowed share of golden images the canary fails on. Default 0.0.
    max_error_rate: float = 0.0
    #: Lowest mAP50 stable, the reference, must score on a labelled golden set for the
    #: gates to judge at all: below it (a stable exported at the wrong image size, labels of
    #: other classes) there is no verdict, neither a pass nor a failure. Default 0.01.
    min_stable_map50: float = 0.01

    def __post_init__(self) -> None:
        _check_ranges(self)


@dataclass(kw_only=True, frozen=True)
class LiveGates:
    """Bounds on live per-version figures over one analysis interval."""

    #: Highest allowed canary error rate (failed / all requests that reached it) in the
    #: interval. Default 0.01.
    max_error_rate: float = 0.01
    #: Highest allowed ratio of canary mean latency to stable mean latency. Default 1.5.
    max_latency_ratio: float = 1.5
    #: Fewest canary requests an interval needs to be judged; fewer means "no verdict"
    #: (neither an advance nor a failed check). Default 10.
    min_requests: int = 10
    #: Lowest agreement of mirrored (shadow) canary detections with stable's, when the
    #: Routers mirror traffic (F1 of one-to-one matches, same class, IoU >= 0.5).
    #: Default 0.8.
    min_agreement: float = 0.8
    #: Most standard errors the canary's mean boxes per image may be from stable's, over
    #: the detection window (``detection_gates``: a blind canary, or one that sees boxes
    #: everywhere). Judged from ``Router.detect``'s counts. Default 3.0.
    max_box_count_z: float = 3.0
    #: Largest allowed drop of the canary's mean box confidence below stable's (absolute),
    #: over the detection window. Default 0.15.
    max_confidence_drop: float = 0.15
    #: Seconds of readings the detection gates judge (more than one interval: a canary at
    #: a small weight sends few images per interval). Default 120.0.
    detection_window_s: float = 120.0
    #: Highest allowed ratio of canary p99 latency to stable p99 latency, from the
    #: Routers' histograms (``latency_gates``): looser than the mean's bound, a tail over
    #: one interval is noisier (an identical canary's mean measured 2x stable's for two
    #: intervals on a loaded 2-core machine). Default 3.0.
    max_p99_ratio: float = 3.0
    #: Highest allowed canary p99 latency in ms, an SLO (0: off). Default 0.0.
    max_p99_ms: float = 0.0
    #: Highest share of a GPU's memory (``nv_gpu_memory_used_bytes`` / total), or of the
    #: host's on a CPU server, that may stay in use for ``memory_window_s``
    #: (``resource_gates``). Default 0.95.
    max_memory_share: float = 0.95
    #: Seconds every reading must stay above ``max_memory_share`` for it to fail. Default 60.0.
    memory_window_s: float = 60.0
    #: Largest growth of a server's resident memory (tritonserver and its backend stubs,
    #: ``serve --process-metrics-port``) since the canary was first judged, as a share of
    #: that first reading. Default 0.5.
    max_resident_growth: float = 0.5

    def __post_init__(self) -> None:
        _check_ranges(self)

    @property
    def window_s(self) -> float:
        """How long the readings judged over a window are kept (the longer window)."""
        return max(self.detection_window_s, self.memory_window_s)


G = TypeVar("G", GoldenGates, LiveGates)


def parse_gate_overrides(gates: G, overrides: Iterable[str]) -> G:
    """Apply ``NAME=VALUE`` overrides to ``gates``; unknown names or bad values raise.

    Only converts each value to its field's type: the gates check their own ranges.
    """
    known = {f.name: f for f in fields(gates)}
    changes: dict[str, Any] = {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise InvalidGateError(
                f"unknown gate {item!r}: use NAME=VALUE with NAME one of {', '.join(known)}"
            )
        kind = int if known[name].type in ("int", int) else float
        try:
            value = kind(raw.strip())
        except ValueError:
            raise InvalidGateError(f"gate {name}={raw!r} is not a {kind.__name__}") from None
        changes[name] = value
    return replace(gates, **changes)


@dataclass(kw_only=True, frozen=True)
class GateResult:
    """One gate's verdict: the measured value against its bound."""

    name: str
    value: float | None
    bound: float
    passed: bool
    #: Why the gate was skipped or what the value means.
    detail: str = ""

    @classmethod
    def of(
        cls,
        gates: GoldenGates | LiveGates,
        bound: str,
        value: float | None,
        detail: str = "",
        *,
        source: str | None = None,
    ) -> GateResult:
        """The verdict of the bound field ``bound`` of ``gates`` on ``value``.

        The gate is named after its field, the name ``--gate``/``--live-gate`` take (with
        ``[source]`` for a live gate judged per metrics source), so a report names what a
        user sets: one name, from one place. ``max_`` bounds pass at or below, ``min_`` at or
        above.
        """
        if bound not in {f.name for f in fields(gates)}:
            raise ValueError(f"{type(gates).__name__} has no bound {bound!r}")
        limit = getattr(gates, bound)
        name = bound if source is None else f"{bound}[{source}]"
        check = cls.at_least if bound.startswith("min_") else cls.at_most
        return check(name, value, limit, detail)

    @classmethod
    def at_most(cls, name: str, value: float | None, bound: float, detail: str = "") -> GateResult:
        """Passes when ``value <= bound`` (or when there is no value: skipped)."""
        return cls(
            name=name,
            value=value,
            bound=bound,
            passed=value is None or value <= bound,
            detail=detail,
        )

    @classmethod
    def at_least(cls, name: str, value: float | None, bound: float, detail: str = "") -> GateResult:
        """Passes when ``value >= bound`` (or when there is no value: skipped)."""
        return cls(
            name=name,
            value=value,
            bound=bound,
            passed=value is None or value >= bound,
            detail=detail,
        )

    def describe(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        verdict = "ok" if self.passed else "FAILED"
        more = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {shown} (bound {self.bound:g}) {verdict}{more}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed(results: Iterable[GateResult]) -> list[GateResult]:
    """The gates that did not pass."""
    return [r for r in results if not r.passed]
