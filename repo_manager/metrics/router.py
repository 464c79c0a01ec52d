"""Client-side Prometheus metrics of Routers, labelled ``{model, version}``.

Triton's own per-version metrics count what reached the server; these count what the
clients saw, including fallbacks that Triton cannot know about:

- ``repo_manager_router_requests_total{model, version, outcome}``: one per ``Router.infer``;
  ``version`` served it (or was chosen, when it failed); ``outcome`` is ``ok``,
  ``fallback`` (served by the other version after the chosen one failed) or ``error``.
- ``repo_manager_router_errors_total{model, version}``: every failed attempt on a version,
  including those a fallback rescued (the canary's health as clients see it).
- ``repo_manager_router_fallbacks_total{model, version}``: requests moved away from it.
- ``repo_manager_router_latency_seconds{model, version}``: histogram of successful attempts.
- ``repo_manager_router_detect_images_total`` / ``_detections_total`` /
  ``_detections_squared_total`` / ``_detection_scores_total{model, version}``: what
  ``Router.detect`` found on the images a version answered (the live detection gates).
- ``repo_manager_router_shadow_*``: mirrored requests to a canary (see ``routing.shadow``).
- ``repo_manager_router_table_source{model, source}``: Routers following the routing table
  through the manager's watch (``watch``) or by polling storage (``storage``) now.
- ``repo_manager_router_watch_fallbacks_total{model}``: times a Router's watch endpoint was
  unreachable and it fell back to polling storage.

With a cohort rule in the routing table (``routing/cohort.py``), the per-version series
(requests, errors, fallbacks, latency, detections) carry ``cohort="in"`` or ``"out"``:
whether the request matched the rule; without one they carry no cohort label (Prometheus
reads an empty label as no label), so series and queries of rollouts without a cohort
are as they were. The live analysis judges a cohort's canary against stable's
``cohort="in"`` series (``metric_sources``).

A ``RouterMetrics`` store holds the series and is registered into the registry it is
given; several Routers share one store (one per model, or several per model, add to the
same series). Nothing is registered at import: ``RouterMetrics.default()`` creates the
process-wide store on prometheus-client's default registry when the first Router that was
given none is built, so an application that never builds a Router exports nothing.

Why not prometheus-client's ``Counter``/``Histogram`` children: measured right after a
gRPC call on this project's 2-core machines, ``Histogram.observe`` + ``Counter.inc`` took
about 5 µs (several Python frames, two to three locks, a bucket loop), more than the rest
of the Router's overhead together. Each (model, version) here is one object updated under
one lock (about 2 µs in the same spot) and exposed through a prometheus-client
``Collector``, so scrapes, ``get_sample_value`` and ``start_metrics_server`` work as with
stock metrics.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from repo_manager.metrics.metric_names import (
    ROUTER_DETECTED_IMAGES,
    ROUTER_DETECTION_SCORES,
    ROUTER_DETECTIONS,
    ROUTER_DETECTIONS_SQUARED,
    ROUTER_ERRORS,
    ROUTER_FALLBACKS,
    ROUTER_LATENCY,
    ROUTER_REQUESTS,
    ROUTER_TABLE_SOURCE,
    ROUTER_WATCH_FALLBACKS,
    SHADOW_BOXES,
    SHADOW_LATENCY,
    SHADOW_REQUESTS,
)

__all__ = [
    "BUCKET_LABELS",
    "IN",
    "LATENCY_BUCKETS",
    "NO_COHORT",
    "OUT",
    "RouterMetrics",
    "ShadowMetrics",
    "TableSource",
    "VersionMetrics",
]

#: Seconds; inference through Triton is ms-scale (python backend ~0.4 ms, YOLO ~5-50 ms).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BUCKET_LABELS = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
#: The ``cohort`` label's values: no rule (no label), inside the rule, outside it.
NO_COHORT, IN, OUT = "", "in", "out"

_DOCS = {
    SHADOW_REQUESTS: "Requests mirrored to a canary (responses discarded), by outcome.",
    SHADOW_LATENCY: "Latency of successful mirrored requests, per canary version.",
    SHADOW_BOXES: "Detections compared on mirrored requests: reference, shadow, matched, "
    "new_class (the shadow's of classes the reference does not know).",
    ROUTER_REQUESTS: "Requests sent through a Router, by the version that served them and outcome.",
    ROUTER_ERRORS: "Failed inference attempts on a version (Triton error or unreachable server).",
    ROUTER_FALLBACKS: "Requests retried on the other version after this version failed.",
    ROUTER_LATENCY: "Latency of successful inference attempts through a Router, per version.",
    ROUTER_TABLE_SOURCE: "Routers following the routing table by the watch or by storage.",
    ROUTER_WATCH_FALLBACKS: "Times a Router lost its watch endpoint and polled storage instead.",
    ROUTER_DETECTED_IMAGES: "Images a version answered through Router.detect.",
    ROUTER_DETECTIONS: "Boxes Router.detect found on those images.",
    ROUTER_DETECTIONS_SQUARED: "Sum over those images of each image's box count, squared.",
    ROUTER_DETECTION_SCORES: "Sum of the scores of those boxes.",
}
#: The detection counters, in ``VersionMetrics.detections`` order.
_DETECTION_FAMILIES = (
    ROUTER_DETECTED_IMAGES,
    ROUTER_DETECTIONS,
    ROUTER_DETECTIONS_SQUARED,
    ROUTER_DETECTION_SCORES,
)


class VersionMetrics:
    """The counters of one (model, version); created once, then updated on the hot path."""

    __slots__ = (
        "_buckets",
        "_detections",
        "_lock",
        "_sum",
        "cohort",
        "error",
        "errors",
        "fallback",
        "fallbacks",
        "model",
        "ok",
        "version",
    )

    def __init__(self, model: str, version: str, cohort: str = NO_COHORT) -> None:
        self.model = model
        self.version = version
        self.cohort = cohort
        self._lock = threading.Lock()
        self.ok = 0
        self.fallback = 0
        self.error = 0
        self.errors = 0
        self.fallbacks = 0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0
        self._detections = [0.0, 0.0, 0.0, 0.0]  # images, boxes, boxes squared, scores

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

    def detected(self, boxes: int, score_sum: float) -> None:
        """``Router.detect`` found ``boxes`` boxes (scores adding up to ``score_sum``) on
        one image this version answered."""
        with self._lock:
            found = self._detections
            found[0] += 1
            found[1] += boxes
            found[2] += boxes * boxes
            found[3] += score_sum

    @property
    def detections(self) -> tuple[float, float, float, float]:
        """Images, boxes, the sum of each image's box count squared, the sum of scores."""
        with self._lock:
            images, boxes, squared, scores = self._detections
        return images, boxes, squared, scores

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
    version that served the user, of the canary, and those that match one to one (same
    class name); ``boxes_new_class`` the canary's detections of classes the reference
    version does not know, which are neither matched nor counted as the canary's.
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
            "boxes_new_class": 0.0,
        }

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self.values[name] += amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.values)


class TableSource:
    """How the Routers of one model follow its routing table: how many through the
    manager's watch, how many by polling storage, and how often a watch was lost."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self.following = {"watch": 0, "storage": 0}
        self.fallbacks = 0

    def moved(self, old: str | None, new: str | None, *, fell_back: bool = False) -> None:
        """A Router stopped following by ``old`` and follows by ``new`` (None: none)."""
        with self._lock:
            if old is not None:
                self.following[old] -= 1
            if new is not None:
                self.following[new] += 1
            self.fallbacks += fell_back

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.following), self.fallbacks


class RouterMetrics:
    """The series of every Router that shares this store, registered into one registry."""

    _default: RouterMetrics | None = None
    _default_lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: Where the series are exposed (None: kept, not exposed; for tests of counts).
        self.registry = registry
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], VersionMetrics] = {}
        self._shadow: dict[tuple[str, str], ShadowMetrics] = {}
        self._sources: dict[str, TableSource] = {}
        if registry is not None:
            registry.register(_RouterCollector(self))

    @classmethod
    def default(cls) -> RouterMetrics:
        """The process-wide store on prometheus-client's default registry (made once, on
        first use: what ``start_metrics_server`` serves without a registry)."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls(REGISTRY)
            return cls._default

    def version(self, model: str, version: str, cohort: str = NO_COHORT) -> VersionMetrics:
        """The counters of one model version, inside or outside a cohort (``IN``, ``OUT``)
        or with none (created on first use)."""
        key = (model, version, cohort)
        found = self._series.get(key)
        if found is not None:
            return found
        with self._lock:
            return self._series.setdefault(key, VersionMetrics(model, version, cohort))

    def shadow(self, model: str, version: str) -> ShadowMetrics:
        """The shadow counters of one canary version (created on first use)."""
        with self._lock:
            return self._shadow.setdefault((model, version), ShadowMetrics(model, version))

    def table_source(self, model: str) -> TableSource:
        """How this store's Routers of ``model`` follow its table (created on first use)."""
        with self._lock:
            return self._sources.setdefault(model, TableSource(model))

    def _all(self) -> tuple[list[VersionMetrics], list[ShadowMetrics], list[TableSource]]:
        with self._lock:
            return (
                list(self._series.values()),
                list(self._shadow.values()),
                list(self._sources.values()),
            )


_Families = tuple[
    CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily
]


def _families() -> _Families:
    labels = ["model", "version", "cohort"]
    return (
        CounterMetricFamily(ROUTER_REQUESTS, _DOCS[ROUTER_REQUESTS], labels=[*labels, "outcome"]),
        CounterMetricFamily(ROUTER_ERRORS, _DOCS[ROUTER_ERRORS], labels=labels),
        CounterMetricFamily(ROUTER_FALLBACKS, _DOCS[ROUTER_FALLBACKS], labels=labels),
        HistogramMetricFamily(ROUTER_LATENCY, _DOCS[ROUTER_LATENCY], labels=labels),
    )


def _drop_empty_cohort(families: Iterable[Metric]) -> None:
    """Samples of series without a cohort lose the empty label: their names and labels are
    those of a Router without cohorts (an empty label is no label to Prometheus anyway)."""
    for family in families:
        family.samples = [
            s._replace(labels={k: v for k, v in s.labels.items() if k != "cohort"})
            if s.labels.get("cohort") == NO_COHORT
            else s
            for s in family.samples
        ]


class _RouterCollector(Collector):
    """Turns a store's series into Prometheus samples at scrape time."""

    def __init__(self, store: RouterMetrics) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return (
            *_families(),
            CounterMetricFamily(SHADOW_REQUESTS, _DOCS[SHADOW_REQUESTS]),
            SummaryMetricFamily(SHADOW_LATENCY, _DOCS[SHADOW_LATENCY]),
            CounterMetricFamily(SHADOW_BOXES, _DOCS[SHADOW_BOXES]),
            GaugeMetricFamily(ROUTER_TABLE_SOURCE, _DOCS[ROUTER_TABLE_SOURCE]),
            CounterMetricFamily(ROUTER_WATCH_FALLBACKS, _DOCS[ROUTER_WATCH_FALLBACKS]),
            *(CounterMetricFamily(name, _DOCS[name]) for name in _DETECTION_FAMILIES),
        )

    def collect(self) -> Iterator[Metric]:
        requests, errors, fallbacks, latency = _families()
        series, shadows, sources = self.store._all()
        for s in series:
            ok, fallback, error, n_errors, n_fallbacks, buckets, total = s._snapshot()
            labels = [s.model, s.version, s.cohort]
            requests.add_metric([*labels, "ok"], ok)
            requests.add_metric([*labels, "fallback"], fallback)
            requests.add_metric([*labels, "error"], error)
            errors.add_metric(labels, n_errors)
            fallbacks.add_metric(labels, n_fallbacks)
            cumulative, running = [], 0
            for bound, count in zip(BUCKET_LABELS, buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            latency.add_metric(labels, cumulative, total)
        found = (requests, errors, fallbacks, latency, *_detection_families(series))
        _drop_empty_cohort(found)
        yield from found
        shadow_requests = CounterMetricFamily(
            SHADOW_REQUESTS, _DOCS[SHADOW_REQUESTS], labels=["model", "version", "outcome"]
        )
        shadow_latency = SummaryMetricFamily(
            SHADOW_LATENCY, _DOCS[SHADOW_LATENCY], labels=["model", "version"]
        )
        shadow_boxes = CounterMetricFamily(
            SHADOW_BOXES, _DOCS[SHADOW_BOXES], labels=["model", "version", "side"]
        )
        for sh in shadows:
            v = sh.snapshot()
            labels = [sh.model, sh.version]
            for outcome in ("ok", "error", "dropped"):
                shadow_requests.add_metric([*labels, outcome], v[outcome])
            shadow_latency.add_metric(labels, int(v["latency_count"]), v["latency_sum"])
            for side in ("reference", "shadow", "matched", "new_class"):
                shadow_boxes.add_metric([*labels, side], v[f"boxes_{side}"])
        yield from (shadow_requests, shadow_latency, shadow_boxes)
        yield from _source_families(sources)


def _detection_families(series: list[VersionMetrics]) -> list[Metric]:
    families = [
        CounterMetricFamily(name, _DOCS[name], labels=["model", "version", "cohort"])
        for name in _DETECTION_FAMILIES
    ]
    for s in series:
        for family, value in zip(families, s.detections, strict=True):
            family.add_metric([s.model, s.version, s.cohort], value)
    return list(families)


def _source_families(sources: list[TableSource]) -> Iterator[Metric]:
    following = GaugeMetricFamily(
        ROUTER_TABLE_SOURCE, _DOCS[ROUTER_TABLE_SOURCE], labels=["model", "source"]
    )
    fallbacks = CounterMetricFamily(
        ROUTER_WATCH_FALLBACKS, _DOCS[ROUTER_WATCH_FALLBACKS], labels=["model"]
    )
    for source in sources:
        counts, fell_back = source.snapshot()
        for name, count in sorted(counts.items()):
            following.add_metric([source.model, name], count)
        fallbacks.add_metric([source.model], fell_back)
    yield from (following, fallbacks)
