"""Live per-version figures for the progressive analysis, from two kinds of metrics source.

Both providers answer the same question behind one interface (``MetricsProvider``): the
cumulative counters of every version of a model, for two sources of figures:

- ``triton``: Triton's per-version metrics on its metrics port (requests that reached
  the server: ``nv_inference_request_success/failure``, ``nv_inference_request_duration_us``);
- ``router``: the Routers' metrics (what clients saw: attempts that failed, fallbacks,
  latency histogram), exposed by ``repo_manager.metrics.start_metrics_server``;
- ``shadow``: requests the Routers mirrored to the canary (outcomes, latency, and how
  many of its detections matched stable's), which judge a canary even at weight 0.

``ScrapeProvider`` reads Prometheus text endpoints directly (Triton's, a Router's);
``PromQLProvider`` asks a Prometheus server (``/api/v1/query``) the same sums in PromQL.
The analysis keeps the previous snapshot in the rollout state and judges the *difference*,
so one step judges exactly the interval since the last one, in any process.

A source that cannot be read raises ``MetricsUnavailableError``: a fact about the
monitoring, never a verdict on the canary.
"""

from __future__ import annotations

import enum
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from repo_manager.detection_gates import DetectionWindow, counter_delta, detection_gates
from repo_manager.errors import MetricsUnavailableError
from repo_manager.gates import GateResult, LiveGates
from repo_manager.latency_gates import BUCKET_KEYS, latency_gates, tail_ms
from repo_manager.metrics import metric_names as names
from repo_manager.names import versions_model_name

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
        result: Snapshot = {key: {} for key in QUERIES}
        for url in self.urls:
            text = _get(url, self.timeout).decode("utf-8", "replace")
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError as exc:
                raise MetricsUnavailableError(f"metrics source {url}: unparsable: {exc}") from exc
            for family in families:
                for s in family.samples:
                    name = s.name.removesuffix("_total")
                    if name not in wanted or s.labels.get("model") != model_label(name, model):
                        continue
                    version = s.labels.get("version", "")
                    for key, labels in wanted[name]:
                        if all(s.labels.get(k) == v for k, v in labels.items()):
                            per = result[key]
                            per[version] = per.get(version, 0.0) + float(s.value)
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
            for item in self.query(f"sum by (version) ({sample}{{{matchers}}})"):
                version = str(item.get("metric", {}).get("version", ""))
                per[version] = float(item["value"][1])
            result[key] = per
        return result


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
    window_start: Snapshot | None = None,
) -> Verdict:
    """Compare canary with stable over the interval between two snapshots (the detection
    gates: since ``window_start``, the oldest reading of their window; default ``before``)."""
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
    seen = detection_gates(
        now,
        before if window_start is None else window_start,
        stable=stable,
        canary=canary,
        gates=gates,
    )
    if seen:
        judged.append("router: detections")
        results.extend(seen)
    results.extend(latency_gates(now, before, stable=stable, canary=canary, gates=gates))
    if not judged:
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
