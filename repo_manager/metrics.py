"""Client-side Prometheus metrics of every Router in the process, labelled ``{model, version}``.

Module-level, so several Routers (one per model, or several per model) add to the same
series. Triton's own per-version metrics count what reached the server; these count what
the clients saw, including fallbacks that Triton cannot know about:

- ``repo_manager_router_requests_total{model, version, outcome}``: one per ``Router.infer``;
  ``version`` served it (or was chosen, when it failed); ``outcome`` is ``ok``,
  ``fallback`` (served by the other version after the chosen one failed) or ``error``.
- ``repo_manager_router_errors_total{model, version}``: every failed attempt on a version,
  including those a fallback rescued (the canary's health as clients see it).
- ``repo_manager_router_fallbacks_total{model, version}``: requests moved away from it.
- ``repo_manager_router_latency_seconds{model, version}``: histogram of successful attempts.

Why not prometheus-client's ``Counter``/``Histogram`` children: measured right after a
gRPC call on this project's 2-core machines, ``Histogram.observe`` + ``Counter.inc`` took
about 5 µs (several Python frames, two to three locks, a bucket loop), more than the rest
of the Router's overhead together. Each (model, version) here is one object updated under
one lock (about 2 µs in the same spot) and exposed through a prometheus-client
``Collector``, so scrapes, ``REGISTRY.get_sample_value`` and ``start_metrics_server``
work as with stock metrics.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from repo_manager.errors import InvalidInputError

__all__ = [
    "LATENCY_BUCKETS",
    "ShadowMetrics",
    "VersionMetrics",
    "publish_reconcile_pass",
    "publish_rollout_state",
    "shadow_metrics",
    "start_metrics_server",
    "version_metrics",
]

#: Seconds; inference through Triton is ms-scale (python backend ~0.4 ms, YOLO ~5-50 ms).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BUCKET_LABELS = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]

_REQUESTS = "repo_manager_router_requests"
_ERRORS = "repo_manager_router_errors"
_FALLBACKS = "repo_manager_router_fallbacks"
_LATENCY = "repo_manager_router_latency_seconds"
_SHADOW_REQUESTS = "repo_manager_router_shadow_requests"
_SHADOW_LATENCY = "repo_manager_router_shadow_latency_seconds"
_SHADOW_BOXES = "repo_manager_router_shadow_boxes"
_DOCS = {
    _SHADOW_REQUESTS: "Requests mirrored to a canary (responses discarded), by outcome.",
    _SHADOW_LATENCY: "Latency of successful mirrored requests, per canary version.",
    _SHADOW_BOXES: "Detections compared on mirrored requests: reference, shadow, matched.",
    _REQUESTS: "Requests sent through a Router, by the version that served them and outcome.",
    _ERRORS: "Failed inference attempts on a version (Triton error or unreachable server).",
    _FALLBACKS: "Requests retried on the other version after this version failed.",
    _LATENCY: "Latency of successful inference attempts through a Router, per served version.",
}


class VersionMetrics:
    """The counters of one (model, version); created once, then updated on the hot path."""

    __slots__ = (
        "_buckets",
        "_lock",
        "_sum",
        "error",
        "errors",
        "fallback",
        "fallbacks",
        "model",
        "ok",
        "version",
    )

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self._lock = threading.Lock()
        self.ok = 0
        self.fallback = 0
        self.error = 0
        self.errors = 0
        self.fallbacks = 0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0

    def served(self, seconds: float, *, fallback: bool = False) -> None:
        """A request this version answered (after ``seconds``)."""
        i = bisect_left(LATENCY_BUCKETS, seconds)  # buckets are "less than or equal"
        with self._lock:
            if fallback:
                self.fallback += 1
            else:
                self.ok += 1
            self._buckets[i] += 1
            self._sum += seconds

    def attempt_failed(self) -> None:
        """An attempt on this version failed (whether or not a fallback rescued it)."""
        with self._lock:
            self.errors += 1

    def fell_back(self) -> None:
        """A request chosen for this version was retried on the other one."""
        with self._lock:
            self.fallbacks += 1

    def request_failed(self) -> None:
        """A request chosen for this version ended in an exception for the caller."""
        with self._lock:
            self.error += 1

    def _snapshot(self) -> tuple[int, int, int, int, int, list[int], float]:
        with self._lock:
            return (
                self.ok,
                self.fallback,
                self.error,
                self.errors,
                self.fallbacks,
                list(self._buckets),
                self._sum,
            )


class ShadowMetrics:
    """Mirrored (shadow) requests to one canary version: outcomes, latency, agreement.

    ``boxes_reference`` / ``boxes_shadow`` / ``boxes_matched`` count detections of the
    version that served the user, of the canary, and those that match one to one.
    """

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self._lock = threading.Lock()
        self.values = {
            "ok": 0.0,
            "error": 0.0,
            "dropped": 0.0,
            "latency_sum": 0.0,
            "latency_count": 0.0,
            "boxes_reference": 0.0,
            "boxes_shadow": 0.0,
            "boxes_matched": 0.0,
        }

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self.values[name] += amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.values)


_shadow: dict[tuple[str, str], ShadowMetrics] = {}


def shadow_metrics(model: str, version: str) -> ShadowMetrics:
    """The shared shadow counters of one canary version (created on first use)."""
    with _series_lock:
        return _shadow.setdefault((model, version), ShadowMetrics(model, version))


_series: dict[tuple[str, str], VersionMetrics] = {}
_series_lock = threading.Lock()


def version_metrics(model: str, version: str) -> VersionMetrics:
    """The shared counters of one model version (created on first use)."""
    key = (model, version)
    found = _series.get(key)
    if found is not None:
        return found
    with _series_lock:
        return _series.setdefault(key, VersionMetrics(model, version))


_Families = tuple[
    CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily
]


def _families() -> _Families:
    return (
        CounterMetricFamily(_REQUESTS, _DOCS[_REQUESTS], labels=["model", "version", "outcome"]),
        CounterMetricFamily(_ERRORS, _DOCS[_ERRORS], labels=["model", "version"]),
        CounterMetricFamily(_FALLBACKS, _DOCS[_FALLBACKS], labels=["model", "version"]),
        HistogramMetricFamily(_LATENCY, _DOCS[_LATENCY], labels=["model", "version"]),
    )


class _RouterCollector(Collector):
    """Turns every VersionMetrics into Prometheus samples at scrape time."""

    def describe(self) -> Iterable[Metric]:
        return (
            *_families(),
            CounterMetricFamily(_SHADOW_REQUESTS, _DOCS[_SHADOW_REQUESTS]),
            SummaryMetricFamily(_SHADOW_LATENCY, _DOCS[_SHADOW_LATENCY]),
            CounterMetricFamily(_SHADOW_BOXES, _DOCS[_SHADOW_BOXES]),
        )

    def collect(self) -> Iterator[Metric]:
        requests, errors, fallbacks, latency = _families()
        with _series_lock:
            series = list(_series.values())
        for s in series:
            ok, fallback, error, n_errors, n_fallbacks, buckets, total = s._snapshot()
            labels = [s.model, s.version]
            requests.add_metric([*labels, "ok"], ok)
            requests.add_metric([*labels, "fallback"], fallback)
            requests.add_metric([*labels, "error"], error)
            errors.add_metric(labels, n_errors)
            fallbacks.add_metric(labels, n_fallbacks)
            cumulative, running = [], 0
            for bound, count in zip(_BUCKET_LABELS, buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            latency.add_metric(labels, cumulative, total)
        yield from (requests, errors, fallbacks, latency)
        shadow_requests = CounterMetricFamily(
            _SHADOW_REQUESTS, _DOCS[_SHADOW_REQUESTS], labels=["model", "version", "outcome"]
        )
        shadow_latency = SummaryMetricFamily(
            _SHADOW_LATENCY, _DOCS[_SHADOW_LATENCY], labels=["model", "version"]
        )
        shadow_boxes = CounterMetricFamily(
            _SHADOW_BOXES, _DOCS[_SHADOW_BOXES], labels=["model", "version", "side"]
        )
        with _series_lock:
            shadows = list(_shadow.values())
        for sh in shadows:
            v = sh.snapshot()
            labels = [sh.model, sh.version]
            for outcome in ("ok", "error", "dropped"):
                shadow_requests.add_metric([*labels, outcome], v[outcome])
            shadow_latency.add_metric(labels, int(v["latency_count"]), v["latency_sum"])
            for side in ("reference", "shadow", "matched"):
                shadow_boxes.add_metric([*labels, side], v[f"boxes_{side}"])
        yield from (shadow_requests, shadow_latency, shadow_boxes)


REGISTRY.register(_RouterCollector())


# -- rollout state (manager side, not the hot path: stock Gauges) -------------------------

CANARY_WEIGHT = Gauge(
    "repo_manager_canary_weight", "Percent of traffic the canary gets.", ["model"]
)
ROLLOUT_PHASE = Gauge(
    "repo_manager_rollout_phase", "1 for the model's current rollout phase.", ["model", "phase"]
)
FAILED_CHECKS = Gauge(
    "repo_manager_analysis_failed_checks", "Failed analysis checks of the canary.", ["model"]
)
METRICS_ERRORS = Gauge(
    "repo_manager_analysis_metrics_errors",
    "Consecutive analysis steps whose metrics source could not be read.",
    ["model"],
)
GATE_VALUE = Gauge(
    "repo_manager_gate_value", "Last measured value of each gate (NaN: skipped).", ["model", "gate"]
)
GATE_PASSED = Gauge("repo_manager_gate_passed", "1 if the gate last passed.", ["model", "gate"])
STABLE_VERSION = Gauge(
    "repo_manager_stable_version", "The stable version of the model (0: none).", ["model"]
)
CANARY_VERSION = Gauge(
    "repo_manager_canary_version", "The canary version of the model (0: none).", ["model"]
)
_gates_shown: dict[str, set[str]] = {}


def publish_rollout_state(
    model: str,
    *,
    phase: str,
    phases: Iterable[str],
    canary_weight: int,
    stable: str | None = None,
    canary: str | None = None,
    failed_checks: int = 0,
    metrics_errors: int = 0,
    gates: Iterable[tuple[str, float | None, bool]] = (),
) -> None:
    """Expose a model's rollout state: weight, phase, versions, each gate's last value.

    Gates the last verdict no longer names are removed, so a new analysis never shows the
    readings of an old one.
    """
    CANARY_WEIGHT.labels(model).set(canary_weight)
    STABLE_VERSION.labels(model).set(int(stable) if stable else 0)
    CANARY_VERSION.labels(model).set(int(canary) if canary else 0)
    for name in phases:
        ROLLOUT_PHASE.labels(model, name).set(1 if name == phase else 0)
    FAILED_CHECKS.labels(model).set(failed_checks)
    METRICS_ERRORS.labels(model).set(metrics_errors)
    shown = set()
    for gate, value, passed in gates:
        GATE_VALUE.labels(model, gate).set(float("nan") if value is None else value)
        GATE_PASSED.labels(model, gate).set(1 if passed else 0)
        shown.add(gate)
    for stale in _gates_shown.get(model, set()) - shown:
        GATE_VALUE.remove(model, stale)
        GATE_PASSED.remove(model, stale)
    _gates_shown[model] = shown


# -- the long-running manager (``reconcile --watch``) --------------------------------------

RECONCILE_RUNS = Counter(
    "repo_manager_reconcile_runs",
    "Reconcile passes, by outcome (ok, error: the pass raised and the watch went on).",
    ["outcome"],
)
RECONCILE_ACTIONS = Counter(
    "repo_manager_reconcile_actions",
    "Actions reconcile took on Triton (loads, finished promotes/rollbacks), per model.",
    ["model"],
)
RECONCILE_DURATION = Histogram(
    "repo_manager_reconcile_duration_seconds",
    "Time one reconcile pass took.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0),
)
RECONCILE_UNREACHABLE = Gauge(
    "repo_manager_reconcile_unreachable_servers",
    "Triton servers the last reconcile pass could not reach.",
)
RECONCILE_LAST_SUCCESS = Gauge(
    "repo_manager_reconcile_last_success_timestamp_seconds",
    "Unix time of the last reconcile pass that raised no error.",
)
FLEET_SERVERS = Gauge(
    "repo_manager_fleet_servers", "Triton servers in the fleet at the last reconcile pass."
)


def publish_reconcile_pass(
    *,
    seconds: float,
    ok: bool,
    actions: dict[str, int] | None = None,
    unreachable: int = 0,
    servers: int | None = None,
    finished_at: float | None = None,
) -> None:
    """Record one reconcile pass (the manager's own health, beside the rollout gauges)."""
    RECONCILE_RUNS.labels("ok" if ok else "error").inc()
    RECONCILE_DURATION.observe(seconds)
    for model, count in (actions or {}).items():
        RECONCILE_ACTIONS.labels(model).inc(count)
    if servers is not None:
        FLEET_SERVERS.set(servers)
    if ok:
        RECONCILE_UNREACHABLE.set(unreachable)
        if finished_at is not None:
            RECONCILE_LAST_SUCCESS.set(finished_at)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve this process's metrics (Router ones included) at ``http://addr:port/metrics``.

    Returns prometheus-client's server object; call its ``shutdown()`` to stop it. A port
    that is taken (or an address this host lacks) is one clear InvalidInputError.
    """
    try:
        started = start_http_server(port, addr=addr)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc} "
            "(pick another --metrics-port)"
        ) from exc
    # prometheus-client >= 0.16 returns (server, thread); older ones return None.
    return started[0] if isinstance(started, tuple) else started
