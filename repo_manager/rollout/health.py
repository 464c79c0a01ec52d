"""The emergency path: a canary that stops answering is rolled back at once, on the
long-running manager's next pass, without waiting for an analysis or guard interval.

Two signs, each counted by the manager on every pass (``reconcile --watch --interval``):
- ``failures`` (3 by default) or more failed canary requests since the previous pass and
  not one served (the Routers' and Triton's counters): they failed in a row;
- the canary not READY on some server that answers, ``failures`` passes in a row
  (a crashed backend, a version Triton unloaded).

The counts live in the manager process: a restarted manager counts again from zero, which
delays a rollback by at most ``failures`` passes and never causes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from repo_manager.detection_gates import counter_delta

__all__ = ["HealthWatch"]

Snapshot = Mapping[str, Mapping[str, float]]


@dataclass
class HealthWatch:
    """Per model: the previous pass' counters and the not-ready passes in a row."""

    failures: int = 3
    _last: dict[str, tuple[str, Snapshot]] = field(default_factory=dict)
    _unready: dict[str, int] = field(default_factory=dict)

    def check(
        self, model: str, canary: str, reading: Snapshot | None, *, ready: bool
    ) -> str | None:
        """Why the canary must be rolled back now (None: it is healthy or unknown)."""
        self._unready[model] = 0 if ready else self._unready.get(model, 0) + 1
        if self._unready[model] >= self.failures:
            self.forget(model)
            return f"health: canary {canary} not ready for {self.failures} checks in a row"
        if reading is None:
            return None
        before = self._last.get(model)
        self._last[model] = (canary, reading)
        if before is None or before[0] != canary:
            return None

        # What clients saw when Routers report on the canary, else what Triton counted
        # (never both added up: one request is counted in each).
        def delta(key: str) -> float:
            return counter_delta(reading, before[1], key, canary)

        router = delta("router_errors") + delta("router_ok") + delta("router_fallback_served")
        if router:
            failed = delta("router_errors")
            served = delta("router_ok") + delta("router_fallback_served")
        else:
            failed, served = delta("triton_failure"), delta("triton_success")
        if failed >= self.failures and served == 0:
            self.forget(model)
            return f"health: {failed:.0f} canary requests failed in a row, none served"
        return None

    def forget(self, model: str) -> None:
        self._last.pop(model, None)
        self._unready.pop(model, None)
