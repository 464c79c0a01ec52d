"""The manager's own Prometheus metrics: each model's rollout state and the health of the
long-running manager (``reconcile --watch``), on a registry passed in.

Not the hot path, so stock prometheus-client metrics. Created by the command that serves
them (``rollout --metrics-port``, ``reconcile --watch --metrics-port``) on its own
registry: importing the package registers nothing, so a Router in an application never
exports a manager gauge such as a last-success time of 0 that would invite a false alert.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from repo_manager.metrics.metric_names import (
    CANARY_VERSION,
    CANARY_WEIGHT,
    FAILED_CHECKS,
    FLEET_SERVERS,
    GATE_PASSED,
    GATE_VALUE,
    METRICS_ERRORS,
    RECONCILE_ACTIONS,
    RECONCILE_DURATION,
    RECONCILE_LAST_SUCCESS,
    RECONCILE_RUNS,
    RECONCILE_UNREACHABLE,
    ROLLOUT_PHASE,
    STABLE_VERSION,
)

__all__ = ["ManagerMetrics"]


class ManagerMetrics:
    """Rollout gauges per model and reconcile-pass metrics, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.canary_weight = Gauge(
            CANARY_WEIGHT, "Percent of traffic the canary gets.", ["model"], registry=registry
        )
        self.rollout_phase = Gauge(
            ROLLOUT_PHASE,
            "1 for the model's current rollout phase.",
            ["model", "phase"],
            registry=registry,
        )
        self.failed_checks = Gauge(
            FAILED_CHECKS, "Failed analysis checks of the canary.", ["model"], registry=registry
        )
        self.metrics_errors = Gauge(
            METRICS_ERRORS,
            "Consecutive analysis steps whose metrics source could not be read.",
            ["model"],
            registry=registry,
        )
        self.gate_value = Gauge(
            GATE_VALUE,
            "Last measured value of each gate (NaN: skipped).",
            ["model", "gate"],
            registry=registry,
        )
        self.gate_passed = Gauge(
            GATE_PASSED, "1 if the gate last passed.", ["model", "gate"], registry=registry
        )
        self.stable_version = Gauge(
            STABLE_VERSION,
            "The stable version of the model (0: none).",
            ["model"],
            registry=registry,
        )
        self.canary_version = Gauge(
            CANARY_VERSION,
            "The canary version of the model (0: none).",
            ["model"],
            registry=registry,
        )
        self._gates_shown: dict[str, set[str]] = {}
        self.reconcile_runs = Counter(
            RECONCILE_RUNS,
            "Reconcile passes, by outcome (ok, error: the pass raised and the watch went on).",
            ["outcome"],
            registry=registry,
        )
        self.reconcile_actions = Counter(
            RECONCILE_ACTIONS,
            "Actions reconcile took on Triton (loads, finished promotes/rollbacks), per model.",
            ["model"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            RECONCILE_DURATION,
            "Time one reconcile pass took.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0),
            registry=registry,
        )
        self.reconcile_unreachable = Gauge(
            RECONCILE_UNREACHABLE,
            "Triton servers the last reconcile pass could not reach.",
            registry=registry,
        )
        self.reconcile_last_success = Gauge(
            RECONCILE_LAST_SUCCESS,
            "Unix time of the last reconcile pass that raised no error.",
            registry=registry,
        )
        self.fleet_servers = Gauge(
            FLEET_SERVERS,
            "Triton servers in the fleet at the last reconcile pass.",
            registry=registry,
        )

    def rollout_state(
        self,
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
        self.canary_weight.labels(model).set(canary_weight)
        self.stable_version.labels(model).set(int(stable) if stable else 0)
        self.canary_version.labels(model).set(int(canary) if canary else 0)
        for name in phases:
            self.rollout_phase.labels(model, name).set(1 if name == phase else 0)
        self.failed_checks.labels(model).set(failed_checks)
        self.metrics_errors.labels(model).set(metrics_errors)
        shown = set()
        for gate, value, passed in gates:
            self.gate_value.labels(model, gate).set(float("nan") if value is None else value)
            self.gate_passed.labels(model, gate).set(1 if passed else 0)
            shown.add(gate)
        for stale in self._gates_shown.get(model, set()) - shown:
            self.gate_value.remove(model, stale)
            self.gate_passed.remove(model, stale)
        self._gates_shown[model] = shown

    def reconcile_pass(
        self,
        *,
        seconds: float,
        ok: bool,
        actions: dict[str, int] | None = None,
        unreachable: int = 0,
        servers: int | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Record one reconcile pass (the manager's own health, beside the rollout gauges)."""
        self.reconcile_runs.labels("ok" if ok else "error").inc()
        self.reconcile_duration.observe(seconds)
        for model, count in (actions or {}).items():
            self.reconcile_actions.labels(model).inc(count)
        if servers is not None:
            self.fleet_servers.set(servers)
        if ok:
            self.reconcile_unreachable.set(unreachable)
            if finished_at is not None:
                self.reconcile_last_success.set(finished_at)
