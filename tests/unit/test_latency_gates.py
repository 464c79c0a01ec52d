"""The latency tail gates: p99 from the Routers' histograms, as a ratio and as an SLO."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from repo_manager.analysis import Outcome, ScrapeProvider, Snapshot, judge
from repo_manager.gates import LiveGates
from repo_manager.latency_gates import quantile, tail_ms
from repo_manager.metrics import RouterMetrics


def served(store: RouterMetrics, version: str, seconds: list[float]) -> None:
    for s in seconds:
        store.version("m", version).served(s)


def snapshot(tmp_path: Path, registry: CollectorRegistry) -> Snapshot:
    exposition = tmp_path / "metrics"
    exposition.write_bytes(generate_latest(registry))
    return ScrapeProvider([exposition.as_uri()]).snapshot("m")


def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    # 100 observations: 50 in (0, 0.0005], 50 in (0.0005, 0.001].
    cumulative = [50.0, 100.0] + [100.0] * 12
    assert quantile(0.5, cumulative) == pytest.approx(0.0005)
    assert quantile(0.99, cumulative) == pytest.approx(0.0005 + 0.0005 * 49 / 50)
    assert quantile(0.99, [0.0] * 14) is None
    assert quantile(0.99, [0.0] * 13 + [10.0]) == 5.0  # all beyond the last bound


def test_a_canary_with_a_slow_tail_fails_p99_while_its_mean_passes(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = RouterMetrics(registry)
    served(store, "1", [0.008] * 200)
    served(store, "2", [0.008] * 196 + [0.09] * 4)  # 2% ten times slower
    now = snapshot(tmp_path, registry)
    canary, stable = tail_ms(now, {}, "2"), tail_ms(now, {}, "1")
    assert canary is not None and stable is not None and canary > 50 and stable < 10
    verdict = judge(now, {}, stable="1", canary="2", gates=LiveGates())
    failed = {g.name for g in verdict.gates if not g.passed}
    assert verdict.outcome is Outcome.FAIL and failed == {"max_p99_ratio[router]"}
    slo = judge(now, {}, stable="1", canary="2", gates=LiveGates(max_p99_ratio=100, max_p99_ms=40))
    assert {g.name for g in slo.gates if not g.passed} == {"max_p99_ms[router]"}
