"""Live gates on the latency tail: the canary's p99 from the Routers' histograms, as a
ratio to stable's and as an absolute bound (an SLO).

A mean hides a tail: a canary that answers most requests as fast as stable and one in fifty
ten times slower keeps a mean ratio near 1.2. The quantile is estimated from the interval's
bucket counts as Prometheus' ``histogram_quantile`` does (linear inside the bucket that
holds the rank; the last finite bound when the rank falls in ``+Inf``), so it is as coarse
as ``LATENCY_BUCKETS`` (10, 20, 50, 100 ms ...).
"""

from __future__ import annotations

from collections.abc import Mapping

from repo_manager.detection_gates import counter_delta
from repo_manager.gates import GateResult, LiveGates
from repo_manager.metrics.router import BUCKET_LABELS, LATENCY_BUCKETS

__all__ = ["BUCKET_KEYS", "latency_gates", "quantile", "tail_ms"]

#: Snapshot key of each cumulative latency bucket of the Routers, by its ``le`` label.
BUCKET_KEYS = {f"router_le_{label}": label for label in BUCKET_LABELS}

Snapshot = Mapping[str, Mapping[str, float]]

#: Fewest canary requests an interval needs for its p99 to be judged: below 100 the 99th
#: percentile is the slowest request, one scheduling hiccup (measured: an identical canary's
#: "p99" 951 ms against stable's 161 ms over a few dozen requests on a loaded machine).
P99_MIN_REQUESTS = 100


def quantile(q: float, cumulative: list[float]) -> float | None:
    """The ``q`` quantile (seconds) of cumulative counts per ``LATENCY_BUCKETS`` bound
    (and ``+Inf`` last); None without observations."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(LATENCY_BUCKETS, cumulative, strict=False):
        if count >= rank:
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return LATENCY_BUCKETS[-1]


def tail_ms(now: Snapshot, before: Snapshot, version: str, q: float = 0.99) -> float | None:
    """A version's latency quantile over the interval, in ms."""
    cumulative = [counter_delta(now, before, key, version) for key in BUCKET_KEYS]
    found = quantile(q, cumulative)
    return None if found is None else found * 1000.0


def latency_gates(
    now: Snapshot, before: Snapshot, *, stable: str, canary: str, gates: LiveGates
) -> list[GateResult]:
    """p99 ratio to stable and absolute p99 bound (``max_p99_ms``, 0: off) over the
    interval; none below ``P99_MIN_REQUESTS`` (or ``min_requests``) canary requests."""
    count = counter_delta(now, before, next(reversed(BUCKET_KEYS)), canary)
    if count < max(gates.min_requests, P99_MIN_REQUESTS):
        return []
    c, s = tail_ms(now, before, canary), tail_ms(now, before, stable)
    ratio = None if c is None or not s else c / s
    detail = f"p99 canary {c:.1f} ms / stable " + ("-" if s is None else f"{s:.1f} ms")
    results = [GateResult.of(gates, "max_p99_ratio", ratio, detail, source="router")]
    if gates.max_p99_ms > 0:
        results.append(GateResult.of(gates, "max_p99_ms", c, detail, source="router"))
    return results
