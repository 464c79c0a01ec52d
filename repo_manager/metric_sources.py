"""Where live per-version figures come from: two kinds of metrics source behind one
interface (``MetricsProvider``), each answering with the cumulative counters of every
version of a model (``QUERIES``' keys).

``ScrapeProvider`` reads Prometheus text endpoints directly (Triton's, a Router's);
``PromQLProvider`` asks a Prometheus server (``/api/v1/query``) the same sums in PromQL. A
source that cannot be read raises ``MetricsUnavailableError``: a fact about the monitoring,
never a verdict on the canary (``analysis`` judges what they read).

Cohorts: the Routers' per-version series (``COHORT_KEYS``) carry ``cohort="in"`` for
requests a canary's cohort rule matched (``metrics/router.py``). Besides each version's
total, a snapshot holds their in-cohort part under ``in_cohort(version)``; the analysis of
a rollout with a cohort judges those keys (``judged_series``): the canary's requests from
the cohort against stable's requests from the same cohort. Triton counts per version only,
so its source has no in-cohort keys and does not judge a cohort.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from repo_manager.errors import MetricsUnavailableError
from repo_manager.latency_gates import BUCKET_KEYS
from repo_manager.metrics import metric_names as names
from repo_manager.metrics.router import IN
from repo_manager.names import versions_model_name
from repo_manager.resource_gates import RESIDENT, TOTAL, USED

__all__ = [
    "QUERIES",
    "RESOURCE_QUERIES",
    "MetricsProvider",
    "PromQLProvider",
    "ScrapeProvider",
    "Snapshot",
    "baseline_words",
    "in_cohort",
    "judged_series",
    "model_label",
]


#: One counter per key: (metric sample name, extra label matchers). Summed by version.
QUERIES: dict[str, tuple[str, dict[str, str]]] = {
    "triton_success": (names.TRITON_SUCCESS, {}),
    "triton_failure": (names.TRITON_FAILURE, {}),
    "triton_duration_us": (names.TRITON_DURATION_US, {}),
    "router_ok": (f"{names.ROUTER_REQUESTS}_total", {"outcome": "ok"}),
    "router_fallback_served": (f"{names.ROUTER_REQUESTS}_total", {"outcome": "fallback"}),
    "router_errors": (f"{names.ROUTER_ERRORS}_total", {}),
    "router_fallbacks": (f"{names.ROUTER_FALLBACKS}_total", {}),
    "router_latency_sum": (f"{names.ROUTER_LATENCY}_sum", {}),
    "router_latency_count": (f"{names.ROUTER_LATENCY}_count", {}),
    "shadow_ok": (f"{names.SHADOW_REQUESTS}_total", {"outcome": "ok"}),
    "shadow_error": (f"{names.SHADOW_REQUESTS}_total", {"outcome": "error"}),
    "shadow_latency_sum": (f"{names.SHADOW_LATENCY}_sum", {}),
    "shadow_latency_count": (f"{names.SHADOW_LATENCY}_count", {}),
    "shadow_boxes_reference": (f"{names.SHADOW_BOXES}_total", {"side": "reference"}),
    "shadow_boxes_shadow": (f"{names.SHADOW_BOXES}_total", {"side": "shadow"}),
    "shadow_boxes_matched": (f"{names.SHADOW_BOXES}_total", {"side": "matched"}),
    "router_images": (f"{names.ROUTER_DETECTED_IMAGES}_total", {}),
    "router_boxes": (f"{names.ROUTER_DETECTIONS}_total", {}),
    "router_boxes_squared": (f"{names.ROUTER_DETECTIONS_SQUARED}_total", {}),
    "router_scores": (f"{names.ROUTER_DETECTION_SCORES}_total", {}),
    **{key: (f"{names.ROUTER_LATENCY}_bucket", {"le": le}) for key, le in BUCKET_KEYS.items()},
}


#: Keys read from the Routers' per-version series, which carry the ``cohort`` label.
COHORT_KEYS = frozenset(k for k in QUERIES if k.startswith("router_"))


def in_cohort(version: str) -> str:
    """The snapshot key of ``version``'s requests from inside the canary's cohort."""
    return f"{version} in cohort"


def _all_canary(cohort: Mapping[str, Any]) -> bool:
    """A cohort that sends every request it matches to the canary: stable gets none of
    them, so there is no baseline inside it."""
    return int(cohort.get("weight", 100)) >= 100


def judged_series(stable: str, canary: str, cohort: Mapping[str, Any] | None) -> tuple[str, str]:
    """The snapshot keys an analysis compares: the versions, or with a cohort their
    requests from inside it (stable's from the cohort is the baseline). A cohort that is
    all canary leaves stable none: its baseline is then stable's whole traffic (every
    request from outside the cohort), said in ``baseline_words``, rather than no latency
    or detection baseline at all."""
    if cohort is None:
        return stable, canary
    return (stable if _all_canary(cohort) else in_cohort(stable)), in_cohort(canary)


def baseline_words(cohort: Mapping[str, Any] | None) -> str:
    """What the canary is compared with, in the history's words."""
    if cohort is None:
        return "stable's traffic"
    if _all_canary(cohort):
        return f"stable outside cohort '{cohort['rule']}' (the cohort is all canary)"
    return f"stable inside cohort '{cohort['rule']}'"


#: The servers' gauges (no model label), snapshot key -> (sample, the label naming the device
#: or None for the host) for each sample read into it. A value is keyed ``SERVER DEVICE``
#: (``SERVER host``); a ``server`` label names the server itself and is the key.
RESOURCE_QUERIES: dict[str, tuple[tuple[str, str | None], ...]] = {
    USED: ((names.TRITON_GPU_MEMORY_USED, "gpu_uuid"), (names.TRITON_CPU_MEMORY_USED, None)),
    TOTAL: ((names.TRITON_GPU_MEMORY_TOTAL, "gpu_uuid"), (names.TRITON_CPU_MEMORY_TOTAL, None)),
    RESIDENT: ((names.SERVER_RESIDENT, "server"),),
}


def device_key(server: str, label: str | None, labels: Mapping[str, str]) -> str:
    """The snapshot key of one gauge sample of ``server`` (``RESOURCE_QUERIES``)."""
    if label == "server":
        return labels.get("server") or server
    return f"{server} {'host' if label is None else labels.get(label, '')}"


def _resource_samples() -> dict[str, list[tuple[str, str | None]]]:
    """Sample name -> (snapshot key, device label) of every gauge ``RESOURCE_QUERIES`` reads."""
    wanted: dict[str, list[tuple[str, str | None]]] = {}
    for key, samples in RESOURCE_QUERIES.items():
        for sample, label in samples:
            wanted.setdefault(sample, []).append((key, label))
    return wanted


def model_label(sample: str, model: str) -> str:
    """The ``model`` label a sample carries: Triton counts the versions model, which the
    Router calls pinned (the public name's own counters are the unpinned traffic); our
    Router's metrics carry the published name."""
    return versions_model_name(model) if sample.startswith(names.TRITON_PREFIX) else model


#: key -> version -> cumulative value.
Snapshot = dict[str, dict[str, float]]


class MetricsProvider(Protocol):
    """Where live figures come from."""

    @property
    def name(self) -> str: ...

    def snapshot(self, model: str) -> Snapshot:
        """Cumulative counters of every version of ``model`` (keys of ``QUERIES``)."""
        ...


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MetricsUnavailableError(f"metrics source {url} unreachable: {exc}") from exc


class ScrapeProvider:
    """Reads Prometheus text endpoints directly (Triton's metrics port, Routers' ports)."""

    def __init__(self, urls: Sequence[str], *, timeout: float = 5.0) -> None:
        self.urls = [u if "://" in u else f"http://{u}" for u in urls]
        self.urls = [
            u if urllib.parse.urlsplit(u).path not in ("", "/") else u.rstrip("/") + "/metrics"
            for u in self.urls
        ]
        self.timeout = timeout

    @property
    def name(self) -> str:
        return "scrape " + ", ".join(self.urls)

    def snapshot(self, model: str) -> Snapshot:
        # prometheus-client's parser appends ``_total`` to counters that lack it (Triton's).
        wanted: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for key, (sample, labels) in QUERIES.items():
            wanted.setdefault(sample.removesuffix("_total"), []).append((key, labels))
        gauges = _resource_samples()
        result: Snapshot = {key: {} for key in (*QUERIES, *RESOURCE_QUERIES)}
        for url in self.urls:
            server = urllib.parse.urlsplit(url).netloc
            text = _get(url, self.timeout).decode("utf-8", "replace")
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError as exc:
                raise MetricsUnavailableError(f"metrics source {url}: unparsable: {exc}") from exc
            for family in families:
                for s in family.samples:
                    for key, label in gauges.get(s.name, ()):
                        result[key][device_key(server, label, s.labels)] = float(s.value)
                    name = s.name.removesuffix("_total")
                    if name not in wanted or s.labels.get("model") != model_label(name, model):
                        continue
                    version = s.labels.get("version", "")
                    inside = s.labels.get("cohort") == IN
                    for key, labels in wanted[name]:
                        if all(s.labels.get(k) == v for k, v in labels.items()):
                            per = result[key]
                            per[version] = per.get(version, 0.0) + float(s.value)
                            if inside:
                                part = in_cohort(version)
                                per[part] = per.get(part, 0.0) + float(s.value)
        return result


def _promql_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid PromQL string literal


class PromQLProvider:
    """Asks a Prometheus server, ``sum by (version) (METRIC{model="M", ...})`` per key."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"prometheus {self.url}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """One instant query; the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            document = json.loads(_get(url, self.timeout))
        except ValueError as exc:
            raise MetricsUnavailableError(f"metrics source {url}: not JSON: {exc}") from exc
        if document.get("status") != "success":
            raise MetricsUnavailableError(
                f"prometheus {self.url} refused {promql!r}: {document.get('error', document)}"
            )
        data = document.get("data", {})
        if data.get("resultType") != "vector":
            raise MetricsUnavailableError(f"prometheus {self.url}: expected a vector")
        return list(data.get("result", []))

    def snapshot(self, model: str) -> Snapshot:
        result: Snapshot = {}
        for key, (sample, labels) in QUERIES.items():
            matchers = ", ".join(
                f"{k}={_promql_string(v)}"
                for k, v in {"model": model_label(sample, model), **labels}.items()
            )
            per: dict[str, float] = {}
            by = "version, cohort" if key in COHORT_KEYS else "version"
            for item in self.query(f"sum by ({by}) ({sample}{{{matchers}}})"):
                labels = item.get("metric", {})
                version, value = str(labels.get("version", "")), float(item["value"][1])
                per[version] = per.get(version, 0.0) + value
                if labels.get("cohort") == IN:
                    per[in_cohort(version)] = value
            result[key] = per
        for key, samples in RESOURCE_QUERIES.items():
            devices: dict[str, float] = {}
            for sample, label in samples:
                by = {None: "instance", "server": "server"}.get(label, f"instance, {label}")
                for item in self.query(f"max by ({by}) ({sample})"):
                    labels = {k: str(v) for k, v in item.get("metric", {}).items()}
                    server = labels.get("instance", "")
                    devices[device_key(server, label, labels)] = float(item["value"][1])
            result[key] = devices
        return result
