"""The live analysis' judgement: per-version figures between two readings of the metrics
sources (``metric_sources``: ``ScrapeProvider``, ``PromQLProvider``, re-exported here), the
gates against them, and the verdict. The readings hold, per version:

- ``triton``: Triton's per-version metrics on its metrics port (requests that reached
  the server: ``nv_inference_request_success/failure``, ``nv_inference_request_duration_us``);
- ``router``: the Routers' metrics (what clients saw: attempts that failed, fallbacks,
  latency histogram), exposed by ``repo_manager.metrics.start_metrics_server``;
- ``shadow``: requests the Routers mirrored to the canary (outcomes, latency, and how
  many of its detections matched stable's), which judge a canary even at weight 0.

Detections and the latency tail are judged by ``detection_gates`` and ``latency_gates``.
The analysis keeps the previous snapshot in the rollout state and judges the *difference*,
so one step judges exactly the interval since the last one, in any process.

A source that cannot be read raises ``MetricsUnavailableError``: a fact about the
monitoring, never a verdict on the canary.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from repo_manager.detection_gates import (
    DetectionWindow,
    counter_delta,
    detection_gates,
    window_start,
)
from repo_manager.gates import GateResult, LiveGates
from repo_manager.latency_gates import latency_gates, tail_ms
from repo_manager.metric_sources import (
    QUERIES,
    MetricsProvider,
    PromQLProvider,
    ScrapeProvider,
    Snapshot,
)
from repo_manager.resource_gates import resource_gates

__all__ = [
    "QUERIES",
    "SOURCES",
    "MetricsProvider",
    "Outcome",
    "PromQLProvider",
    "ScrapeProvider",
    "Snapshot",
    "Verdict",
    "judge",
    "readings",
]


@dataclass(kw_only=True, frozen=True)
class Window:
    """One source's figures for one version over one interval."""

    requests: float
    failures: float
    latency_sum: float
    latency_count: float
    fallbacks: float = 0.0
    #: Shadow only: detections of the reference, of the canary, and matched pairs.
    boxes_reference: float = 0.0
    boxes_shadow: float = 0.0
    boxes_matched: float = 0.0

    @property
    def agreement(self) -> float | None:
        boxes = self.boxes_reference + self.boxes_shadow
        return 2.0 * self.boxes_matched / boxes if boxes else None

    @property
    def error_rate(self) -> float | None:
        return self.failures / self.requests if self.requests else None

    @property
    def mean_latency(self) -> float | None:
        return self.latency_sum / self.latency_count if self.latency_count else None


def windows(now: Snapshot, before: Snapshot, version: str) -> dict[str, Window]:
    """Per source, the version's figures between two snapshots."""

    def d(key: str) -> float:
        return counter_delta(now, before, key, version)

    triton_requests = d("triton_success") + d("triton_failure")
    router_served = d("router_ok") + d("router_fallback_served")
    return {
        "triton": Window(
            requests=triton_requests,
            failures=d("triton_failure"),
            latency_sum=d("triton_duration_us") / 1e6,
            latency_count=triton_requests,
        ),
        "router": Window(
            requests=router_served + d("router_errors"),
            failures=d("router_errors"),
            latency_sum=d("router_latency_sum"),
            latency_count=d("router_latency_count"),
            fallbacks=d("router_fallbacks"),
        ),
        "shadow": Window(
            requests=d("shadow_ok") + d("shadow_error"),
            failures=d("shadow_error"),
            latency_sum=d("shadow_latency_sum"),
            latency_count=d("shadow_latency_count"),
            boxes_reference=d("shadow_boxes_reference"),
            boxes_shadow=d("shadow_boxes_shadow"),
            boxes_matched=d("shadow_boxes_matched"),
        ),
    }


#: Sources in the order readings list them.
SOURCES = ("triton", "router", "shadow")


def readings(
    now: Snapshot, before: Snapshot, versions: Mapping[str, str], *, seconds: float | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per source that saw requests, per role of ``versions`` (e.g. ``{"stable": "1",
    "canary": "2"}``): the version's requests, failures, error rate and mean latency (ms)
    between two snapshots, and requests per second when the interval's ``seconds`` are
    known. What an analysis step records and ``status --watch`` shows."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    per_version = {v: windows(now, before, v) for v in set(versions.values())}
    for source in SOURCES:
        if not any(per_version[v][source].requests for v in per_version):
            continue
        result[source] = {}
        for role, version in versions.items():
            w = per_version[version][source]
            latency = w.mean_latency
            reading: dict[str, Any] = {
                "version": version,
                "requests": w.requests,
                "failures": w.failures,
                "error_rate": w.error_rate,
                "latency_ms": None if latency is None else latency * 1000.0,
            }
            if seconds:
                reading["rate"] = w.requests / seconds
            if source == "router":
                reading["p99_ms"] = tail_ms(now, before, version)
                found = DetectionWindow.between(now, before, version)
                if found.images:
                    reading["boxes_per_image"] = found.mean_boxes
                    reading["mean_confidence"] = found.mean_confidence
            result[source][role] = reading
    return result


class Outcome(enum.StrEnum):
    """What one analysis step concluded (its value is what the state document stores)."""

    PASS = "pass"  # every gate held: the canary moves on
    FAIL = "fail"  # a gate failed: one more failed check
    NO_DATA = "no-data"  # too few canary requests to judge: nothing moves


@dataclass(kw_only=True, frozen=True)
class Verdict:
    """One analysis step's judgement and the gates behind it."""

    outcome: Outcome
    gates: tuple[GateResult, ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "gates": [g.to_dict() for g in self.gates],
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Verdict:
        return cls(
            outcome=Outcome(document["outcome"]),
            reason=str(document.get("reason", "")),
            gates=tuple(GateResult(**g) for g in document.get("gates", [])),
        )


def judge(
    now: Snapshot,
    before: Snapshot,
    *,
    stable: str,
    canary: str,
    gates: LiveGates,
    kept: tuple[tuple[float, Snapshot], ...] = (),
) -> Verdict:
    """Compare canary with stable over the interval between two snapshots; the detection
    and memory gates judge their windows of the readings ``kept`` (oldest first, ending
    with ``now``; without them, the detection gates judge since ``before``).

    A failed memory gate fails the step even without canary traffic: the servers' memory
    does not wait for requests."""
    canary_w, stable_w = windows(now, before, canary), windows(now, before, stable)
    results: list[GateResult] = []
    judged = []
    for source in SOURCES:
        # Mirrored requests are compared with what stable's users got through the Router.
        c, s = canary_w[source], stable_w["router" if source == "shadow" else source]
        if c.requests < gates.min_requests:
            continue
        judged.append(f"{source}: canary {c.requests:.0f} requests")
        results.append(
            GateResult.of(
                gates,
                "max_error_rate",
                c.error_rate,
                f"{c.failures:.0f} of {c.requests:.0f} failed"
                + (f", {c.fallbacks:.0f} fell back" if c.fallbacks else ""),
                source=source,
            )
        )
        ratio = None
        c_lat, s_lat = c.mean_latency, s.mean_latency
        if c_lat is not None and s_lat:
            ratio = c_lat / s_lat
        detail = (
            "stable had no traffic"
            if ratio is None
            else f"canary {c_lat * 1000:.1f} ms / stable {s_lat * 1000:.1f} ms"  # type: ignore[operator]
        )
        results.append(GateResult.of(gates, "max_latency_ratio", ratio, detail, source=source))
        if source == "shadow" and c.agreement is not None:
            results.append(
                GateResult.of(
                    gates,
                    "min_agreement",
                    c.agreement,
                    f"{c.boxes_matched:.0f} matched of {c.boxes_reference:.0f} stable / "
                    f"{c.boxes_shadow:.0f} canary detections",
                    source=source,
                )
            )
    start = window_start(kept, seconds=gates.detection_window_s) if kept else None
    seen = detection_gates(
        now,
        before if start is None else start,
        stable=stable,
        canary=canary,
        gates=gates,
    )
    if seen:
        judged.append("router: detections")
        results.extend(seen)
    results.extend(latency_gates(now, before, stable=stable, canary=canary, gates=gates))
    memory = resource_gates(kept, gates=gates)
    results.extend(memory)
    if not judged and all(g.passed for g in memory):
        return Verdict(
            outcome=Outcome.NO_DATA,
            reason=f"fewer than {gates.min_requests} canary requests in the interval",
        )
    bad = [g for g in results if not g.passed]
    if bad:
        reason = "; ".join(g.describe() for g in bad)
        return Verdict(outcome=Outcome.FAIL, gates=tuple(results), reason=reason)
    # The gate values themselves, so the history says by how much each gate held.
    reason = "; ".join(g.describe() for g in results)
    return Verdict(outcome=Outcome.PASS, gates=tuple(results), reason=reason)


def snapshot_to_json(snapshot: Snapshot) -> dict[str, dict[str, float]]:
    return {k: dict(v) for k, v in snapshot.items()}


def snapshot_from_json(document: Mapping[str, Any] | None) -> Snapshot:
    if not document:
        return {}
    return {str(k): {str(v): float(x) for v, x in d.items()} for k, d in document.items()}
