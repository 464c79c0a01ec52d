"""The watching manager's gauges: what a dashboard shows must be the state now."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from repo_manager.metrics import ManagerMetrics
from repo_manager.phases import Phase


def gauges() -> tuple[ManagerMetrics, Gauge]:
    """Metrics on a registry of their own (tests share none), and a reader of it."""
    registry = CollectorRegistry()

    def gauge(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    return ManagerMetrics(registry), gauge


Gauge = Callable[..., float | None]


def test_gates_the_last_verdict_no_longer_names_disappear_and_versions_show() -> None:
    metrics, gauge = gauges()
    phases = [p.value for p in Phase]
    metrics.rollout_state(
        "m-gates",
        phase="analyzing",
        phases=phases,
        canary_weight=25,
        stable="3",
        canary="4",
        gates=[("error_rate[router]", 0.0, True), ("agreement[shadow]", 0.5, False)],
    )
    assert gauge("repo_manager_gate_value", model="m-gates", gate="agreement[shadow]") == 0.5
    assert gauge("repo_manager_canary_version", model="m-gates") == 4
    metrics.rollout_state(
        "m-gates",
        phase="succeeded",
        phases=phases,
        canary_weight=0,
        stable="4",
        gates=[("error_rate[router]", 0.01, True)],
    )
    assert gauge("repo_manager_gate_value", model="m-gates", gate="agreement[shadow]") is None
    assert gauge("repo_manager_gate_passed", model="m-gates", gate="agreement[shadow]") is None
    assert gauge("repo_manager_gate_value", model="m-gates", gate="error_rate[router]") == 0.01
    assert gauge("repo_manager_stable_version", model="m-gates") == 4
    assert gauge("repo_manager_canary_version", model="m-gates") == 0
    assert gauge("repo_manager_rollout_phase", model="m-gates", phase="succeeded") == 1
    assert gauge("repo_manager_rollout_phase", model="m-gates", phase="analyzing") == 0


def test_a_failed_pass_is_counted_but_keeps_the_last_good_figures() -> None:
    metrics, gauge = gauges()
    before = gauge("repo_manager_reconcile_runs_total", outcome="error") or 0.0
    metrics.reconcile_pass(
        seconds=0.2, ok=True, actions={"m-pass": 2}, unreachable=1, servers=3, finished_at=1000.0
    )
    metrics.reconcile_pass(seconds=0.1, ok=False)
    assert gauge("repo_manager_reconcile_runs_total", outcome="error") == before + 1
    assert gauge("repo_manager_reconcile_last_success_timestamp_seconds") == 1000.0
    assert gauge("repo_manager_reconcile_unreachable_servers") == 1
    assert gauge("repo_manager_fleet_servers") == 3
    assert gauge("repo_manager_reconcile_actions_total", model="m-pass") == 2
