"""The metrics stores: Router series (one object per version, a Collector at scrape time)
and the manager's metrics, each on a registry of its own; importing registers nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from repo_manager.metrics import RouterMetrics

MODEL = "det"


def test_metric_series_are_created_once_per_version() -> None:
    store = RouterMetrics()
    assert store.version(MODEL, "9") is store.version(MODEL, "9")


def test_metrics_expose_outcomes_and_cumulative_latency_buckets() -> None:
    registry = CollectorRegistry()
    series = RouterMetrics(registry).version("metrics-model", "3")
    series.served(0.0004)
    series.served(0.003)
    series.served(7.0, fallback=True)
    series.attempt_failed()
    series.fell_back()
    series.request_failed()
    labels = {"model": "metrics-model", "version": "3"}

    def value(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(name, {**labels, **extra})

    assert value("repo_manager_router_requests_total", outcome="ok") == 2
    assert value("repo_manager_router_requests_total", outcome="fallback") == 1
    assert value("repo_manager_router_requests_total", outcome="error") == 1
    assert value("repo_manager_router_errors_total") == 1
    assert value("repo_manager_router_fallbacks_total") == 1
    bucket = "repo_manager_router_latency_seconds_bucket"
    assert value(bucket, le="0.0005") == 1
    assert value(bucket, le="0.005") == 2
    assert value(bucket, le="5.0") == 2 and value(bucket, le="+Inf") == 3
    assert value("repo_manager_router_latency_seconds_count") == 3
    assert value("repo_manager_router_latency_seconds_sum") == pytest.approx(7.0034)
    text = generate_latest(registry).decode()
    assert "# TYPE repo_manager_router_latency_seconds histogram" in text
    assert (
        'repo_manager_router_requests_total{model="metrics-model",outcome="ok",version="3"}' in text
    )


def test_importing_every_module_of_the_package_registers_no_metric() -> None:
    """A Router in a user's application must not export manager gauges (a last-success
    time of 0 invites false alerts), nor anything before a Router exists."""
    code = (
        "import pkgutil, importlib, repo_manager\n"
        "from prometheus_client import REGISTRY\n"
        "for m in pkgutil.walk_packages(repo_manager.__path__, 'repo_manager.'):\n"
        "    if m.name != 'repo_manager.demo':\n"
        "        importlib.import_module(m.name)\n"
        "names = sorted(f.name for f in REGISTRY.collect() if f.name.startswith('repo_manager'))\n"
        "print(','.join(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "", done.stdout
