"""The long-running manager judges every canary: it takes the steps of a detached (or
orphaned) analysis, and guards a canary left at a fixed weight.

A guarded canary (phase ``progressing``: published at a weight, or set by a person) is
judged each interval with the same gates and the same ``decide`` as an analysis step: a
failed check is recorded in the history, ``threshold`` of them in a row roll it back. A
guard never promotes (nobody asked for it) and never moves the weight.

The guard's progress (its last reading, failed checks, detection window) lives in its own
object beside the state (``guard_key``), written under the model's lock: the state document
is what every Router reads, and a passing check changes nothing they need. The history
gets an entry when a guard starts watching a canary, at each failed check and at the
rollback. Two managers share the file, so neither judges an interval the other judged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from repo_manager.analysis import Outcome, Snapshot
from repo_manager.errors import MetricsUnavailableError, StorageError
from repo_manager.gates import LiveGates
from repo_manager.phases import Phase
from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.rollout.analysis_step import Finish, Then, advance, decide
from repo_manager.rollout.health import HealthWatch
from repo_manager.rollout.ledger import Ledger
from repo_manager.rollout.server_moves import ServerMoves
from repo_manager.rollout.settings import AnalysisPlan
from repo_manager.state import RolloutState

__all__ = ["TAKEOVER_PATIENCE", "GuardSettings", "guard", "guard_key", "judge_canary"]

#: How many intervals the manager waits after a ``rollout`` process' last step before it
#: takes over its analysis (that process is gone, or stopped).
TAKEOVER_PATIENCE = 3.0


#: The progress document of a model without a guarded canary.
CLEARED = b"{}"


def guard_key(model: str) -> str:
    """The storage key of a model's guard progress (a root object: Triton ignores it; no
    model's own keys end like it)."""
    return f".repo-manager.{model}.guard"


@dataclass(kw_only=True, frozen=True)
class GuardSettings:
    """How the long-running manager judges a canary nobody else judges."""

    #: Seconds between two checks of a guarded canary. Default 30.
    interval_s: float = 30.0
    #: Failed checks in a row at which a guarded canary is rolled back. Default 2.
    threshold: int = 2
    #: Unreadable metrics steps in a row before the guard says so on every pass (never
    #: a rollback). Default 5.
    max_metrics_errors: int = 5
    gates: LiveGates = field(default_factory=LiveGates)

    def plan(self, weight: int) -> AnalysisPlan:
        """The one-step plan a guard judges with (checks its own values)."""
        return AnalysisPlan(
            steps=(weight,),
            threshold=self.threshold,
            max_metrics_errors=self.max_metrics_errors,
            gates=self.gates,
            interval_s=self.interval_s,
        )


def judge_canary(
    ledger: Ledger,
    model: str,
    read: Callable[[str], Snapshot],
    settings: GuardSettings,
    *,
    promote: Finish,
    rollback: Finish,
    moves: ServerMoves,
    health: HealthWatch | None = None,
    ready: Callable[[str, str], bool] | None = None,
) -> RolloutState | None:
    """What the long-running manager does for one model each pass: a health check of its
    canary (``health``: rolled back at once when it stopped answering; ``ready`` says
    whether a version is READY on every server that answers), then the due step of an
    analysis it drives (``rollout --detach``) or whose ``rollout`` stopped taking steps
    (``TAKEOVER_PATIENCE`` intervals), else a guard check of a canary at a fixed weight.
    The state after it, or None when nothing was judged."""
    state = ledger.load(model)
    if state is None:
        return None
    read = _once(read)  # the health check's reading is the step's or the guard's too
    if health is not None and state.canary is not None and state.phase in _JUDGED:
        reason = _unhealthy(health, model, state.canary, read, ready)
        if reason is not None:
            with ledger.locked(model):
                now = ledger.load(model)
                if now is not None and now.canary == state.canary and now.phase in _JUDGED:
                    _forget(ledger, model)
                    return rollback(now, reason=reason)
    if state.phase is Phase.ANALYZING and state.analysis is not None:
        plan = AnalysisStatus.from_json(state.analysis).plan
        after = advance(
            ledger,
            model,
            _Reader(read),
            promote=promote,
            rollback=rollback,
            patience=1.0 if plan.detached else TAKEOVER_PATIENCE,
            moves=moves,
        )
        return None if after.generation == state.generation else after
    return guard(ledger, model, read, settings, rollback=rollback)


#: The phases whose canary the manager checks for health.
_JUDGED = frozenset({Phase.PROGRESSING, Phase.ANALYZING})


def _unhealthy(
    health: HealthWatch,
    model: str,
    canary: str,
    read: Callable[[str], Snapshot],
    ready: Callable[[str, str], bool] | None,
) -> str | None:
    try:
        reading: Snapshot | None = read(model)
    except MetricsUnavailableError:
        reading = None  # no figures: readiness alone decides this pass
    return health.check(
        model, canary, reading, ready=True if ready is None else ready(model, canary)
    )


def _once(read: Callable[[str], Snapshot]) -> Callable[[str], Snapshot]:
    """``read`` for one pass: the metrics sources are scraped at most once per model (an
    unreadable source raises the same error again)."""
    results: dict[str, Snapshot | MetricsUnavailableError] = {}

    def cached(model: str) -> Snapshot:
        if model not in results:
            try:
                results[model] = read(model)
            except MetricsUnavailableError as exc:
                results[model] = exc
        found = results[model]
        if isinstance(found, MetricsUnavailableError):
            raise found
        return found

    return cached


@dataclass(frozen=True)
class _Reader:
    """A snapshot function as the ``MetricsProvider`` that ``advance`` takes."""

    snapshot: Callable[[str], Snapshot]
    name: str = "manager"


def guard(
    ledger: Ledger,
    model: str,
    read: Callable[[str], Snapshot],
    settings: GuardSettings,
    *,
    rollback: Finish,
) -> RolloutState | None:
    """One guard check of ``model``'s canary when one is due; the state after it (None:
    nothing to guard or not due). Only ``progressing`` canaries are guarded: an analysis
    judges its own, and a steady model has none."""
    with ledger.locked(model):
        state = ledger.load(model)
        if state is None or state.phase is not Phase.PROGRESSING or state.canary is None:
            _forget(ledger, model)
            return None
        assert state.stable is not None
        weight = state.weights.get(state.canary, 0)
        status = _load(ledger, model, state.canary, settings.plan(weight))
        now = time.time()
        if not status.due(now):
            return None
        reading: Snapshot | MetricsUnavailableError
        try:
            reading = read(model)
        except MetricsUnavailableError as exc:
            reading = exc
        step = decide(
            status, reading, stable=state.stable, canary=state.canary, weight=weight, at=now
        )
        # A guard stays at its one step and never promotes; unreadable metrics never roll
        # back (the count restarts once past its limit, so it says so again later).
        # Failed checks count in a row: a guard may run for weeks, and noise that fails one
        # check a day must not add up to a rollback.
        kept = replace(step.status, step=0)
        if step.then is Then.STOP:
            kept = replace(kept, metrics_errors=0)
        if kept.last is not None and kept.last.outcome is Outcome.PASS:
            kept = replace(kept, failed_checks=0)
        action = step.action.replace("analysis", "guard", 1)
        if step.then is Then.ROLL_BACK:
            _forget(ledger, model)
            recorded = _entry(ledger, state, action, step.reason, step.details)
            return rollback(recorded, reason=f"guard: {step.why}")
        _save(ledger, model, state.canary, kept)
        if not isinstance(reading, dict):
            return state
        if status.snapshot is None:
            return _entry(
                ledger,
                state,
                f"guard: watching canary {state.canary} at {weight}%",
                f"baseline read; checked every {settings.interval_s:g}s, rolled back after "
                f"{settings.threshold} failed checks, never promoted",
                None,
            )
        if kept.last is not None and kept.last.outcome is Outcome.FAIL:
            return _entry(ledger, state, action, step.reason, step.details)
        return state


def _entry(
    ledger: Ledger, state: RolloutState, action: str, reason: str, details: object
) -> RolloutState:
    """A history entry that moves nothing (progressing stays progressing)."""
    return ledger.record(
        state,
        replace(state),
        action=action,
        reason=reason,
        details=details if isinstance(details, dict) else None,
    )


def _load(ledger: Ledger, model: str, canary: str, plan: AnalysisPlan) -> AnalysisStatus:
    """The guard's progress on this canary at this weight (fresh when it watched another
    canary or weight: a new weight is new traffic)."""
    data = ledger.storage.read_bytes(guard_key(model))
    fresh = AnalysisStatus(plan=plan)
    if data is None:
        return fresh
    try:
        document = json.loads(data)
        status = AnalysisStatus.from_json(document["status"])
        same = document.get("canary") == canary and status.plan.steps == plan.steps
    except (ValueError, KeyError, TypeError, StorageError):
        return fresh  # a damaged progress file costs one baseline, nothing else
    return replace(status, plan=plan) if same else fresh


def _save(ledger: Ledger, model: str, canary: str, status: AnalysisStatus) -> None:
    document = {"canary": canary, "status": status.to_json()}
    ledger.storage.write_bytes_atomic(guard_key(model), json.dumps(document).encode())


def _forget(ledger: Ledger, model: str) -> None:
    """Nothing to guard: an empty progress document (storages have no delete; one read a
    pass when there is nothing to forget)."""
    if ledger.storage.read_bytes(guard_key(model)) not in (None, CLEARED):
        ledger.storage.write_bytes_atomic(guard_key(model), CLEARED)
