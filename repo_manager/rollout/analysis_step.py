"""The progressive analysis: start it, then one ``advance()`` step per interval.

Like Flagger's scheduler, one step is called again each interval and any process can take
it: the previous reading lives in the rollout state. A step first decides (``decide``: a
pure function of the analysis status and the new reading), then records that decision in
one write; only a decision that ends the analysis goes on to promote or roll back.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from repo_manager.analysis import Outcome, Snapshot, Verdict, judge, readings
from repo_manager.detection_gates import window_readings
from repo_manager.errors import MetricsUnavailableError
from repo_manager.metric_sources import baseline_words, judged_series
from repo_manager.names import validate_model_name
from repo_manager.phases import Phase, check_transition
from repo_manager.resource_gates import resource_readings, with_resident_baseline
from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.rollout.ledger import Ledger, with_canary_at
from repo_manager.state import RolloutState

if TYPE_CHECKING:
    from repo_manager.analysis import MetricsProvider
    from repo_manager.rollout.server_moves import ServerMoves
    from repo_manager.rollout.settings import AnalysisPlan

__all__ = [
    "Finish",
    "Step",
    "Then",
    "advance",
    "decide",
    "start_analysis",
    "step_details",
    "stop_analysis",
]


class Then(enum.Enum):
    """What follows once a step's decision is recorded."""

    STAY = "stay"  # the analysis goes on (at the step's weight)
    PROMOTE = "promote"  # passed the last step
    ROLL_BACK = "roll back"  # failed checks reached the threshold
    STOP = "stop"  # metrics unreadable too often: raise, the canary keeps its weight


@dataclass(kw_only=True, frozen=True)
class Step:
    """One step's decision, before anything is persisted."""

    status: AnalysisStatus
    #: The canary's weight once the step is recorded.
    weight: int
    #: The history entry's action and reason.
    action: str
    reason: str
    then: Then = Then.STAY
    #: Why the analysis ends (the promote's or rollback's reason, or the stop's error).
    why: str = ""
    #: The history entry's details (``step_details``).
    details: dict[str, Any] | None = None


def step_details(
    status: AnalysisStatus,
    *,
    weight: int,
    outcome: str,
    step: int,
    read: dict[str, Any] | None = None,
    verdict: Verdict | None = None,
    error: str | None = None,
    servers: dict[str, dict[str, float]] | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """What one step saw, for the history (``history --plot`` draws it): the weight judged,
    the outcome, the counters after the step, the per-version readings of each source, the
    servers' memory (``resource_gates.resource_readings``), the gates and the plan's
    bounds."""
    plan = status.plan
    analysis: dict[str, Any] = {
        "step": step,
        "steps": list(plan.steps),
        "weight": weight,
        "outcome": outcome,
        "failed_checks": status.failed_checks,
        "threshold": plan.threshold,
        "metrics_errors": status.metrics_errors,
        "max_metrics_errors": plan.max_metrics_errors,
        "bounds": asdict(plan.gates),
        "readings": read or {},
        "gates": [g.to_dict() for g in verdict.gates] if verdict else [],
    }
    if servers:
        analysis["servers"] = servers
    if baseline is not None:
        analysis["baseline"] = baseline
    if error is not None:
        analysis["error"] = error
    return {"analysis": analysis}


class Finish(Protocol):
    """Promote or roll back a state whose lock the caller holds."""

    def __call__(self, state: RolloutState, *, reason: str) -> RolloutState: ...


def decide(
    status: AnalysisStatus,
    reading: Snapshot | MetricsUnavailableError,
    *,
    stable: str,
    canary: str,
    weight: int,
    at: float,
    baseline: str | None = None,
) -> Step:
    """Judge the interval since the last reading: the new status and what follows.

    Unreadable metrics count as metrics errors, never as failed checks; the first reading
    is the baseline; too few canary requests give no verdict and nothing moves.
    ``stable`` and ``canary`` are the snapshot keys compared (``judged_series``: with a
    cohort, their requests from inside it), and ``baseline`` says so in the history.
    """
    plan = status.plan
    if isinstance(reading, MetricsUnavailableError):
        errors, limit = status.metrics_errors + 1, plan.max_metrics_errors
        unread = replace(status, metrics_errors=errors, read_at=at)
        return Step(
            status=unread,
            weight=weight,
            action=f"analysis: metrics unavailable ({errors}/{limit})",
            reason=str(reading),
            then=Then.STOP if errors >= limit else Then.STAY,
            why=f"{reading} ({errors} times in a row, limit {limit}); the canary keeps "
            f"{weight}%: run rollout again once metrics are back",
            details=step_details(
                unread,
                weight=weight,
                step=status.step,
                outcome="metrics-unavailable",
                error=str(reading),
            ),
        )
    reading = with_resident_baseline(reading, status.snapshot)
    kept = window_readings(status.window, at=at, reading=reading, seconds=plan.gates.window_s)
    read = replace(status, metrics_errors=0, snapshot=reading, window=kept, read_at=at)
    if status.snapshot is None:
        return Step(
            status=read,
            weight=weight,
            action="analysis: baseline",
            reason="first reading of metrics",
            details=step_details(read, weight=weight, step=status.step, outcome="baseline"),
        )
    # The detection and memory gates judge every reading of their windows (``kept`` ends
    # with this reading); the other gates the interval since the previous reading.
    verdict = judge(
        reading,
        status.snapshot,
        stable=stable,
        canary=canary,
        gates=plan.gates,
        kept=kept,
    )
    if baseline is not None:
        verdict = replace(verdict, reason=f"{verdict.reason}; baseline: {baseline}")
    judged = replace(read, last=verdict)
    seen = readings(reading, status.snapshot, {"stable": stable, "canary": canary})

    def details(after: AnalysisStatus) -> dict[str, Any]:
        return step_details(
            after,
            weight=weight,
            step=status.step,
            outcome=verdict.outcome.value,
            read=seen,
            verdict=verdict,
            servers=resource_readings(reading),
            baseline=baseline,
        )

    if verdict.outcome is Outcome.NO_DATA:
        return Step(
            status=judged,
            weight=weight,
            action=f"analysis: no verdict at {weight}%",
            reason=verdict.reason,
            details=details(judged),
        )
    if verdict.outcome is Outcome.FAIL:
        failed = status.failed_checks + 1
        counted = replace(judged, failed_checks=failed)
        return Step(
            status=counted,
            weight=weight,
            action=f"analysis: check failed at {weight}% ({failed}/{plan.threshold})",
            reason=verdict.reason,
            then=Then.ROLL_BACK if failed >= plan.threshold else Then.STAY,
            why=f"{failed} failed checks (threshold {plan.threshold}): {verdict.reason}",
            details=details(counted),
        )
    step = status.step + 1
    if step < len(plan.steps):
        ahead = plan.steps[step]
        if ahead in plan.approve_before and ahead not in status.approved:
            judged = replace(judged, waiting=ahead)
        if judged.held is not None:
            # A person decides the next move (approve, reject, resume); meanwhile the
            # canary is still judged at its weight, and a failing one still rolls back.
            return Step(
                status=judged,
                weight=weight,
                action=f"analysis: passed at {weight}%, {judged.held}",
                reason=verdict.reason,
                details=details(judged),
            )
    passed = replace(judged, step=step)
    if step >= len(plan.steps):
        return Step(
            status=passed,
            weight=weight,
            action=f"analysis: passed the last step at {weight}%",
            reason=verdict.reason,
            then=Then.PROMOTE,
            why="analysis passed every step",
            details=details(passed),
        )
    return Step(
        status=passed,
        weight=plan.steps[step],
        action=f"analysis: passed at {weight}%, now {plan.steps[step]}%",
        reason=verdict.reason,
        details=details(passed),
    )


def start_analysis(
    ledger: Ledger, model: str, plan: AnalysisPlan, moves: ServerMoves
) -> RolloutState:
    """Put the analysis in charge of the canary at its first step (or resume it), on the
    servers of the plan's first wave (``moves`` loads it there first)."""
    model = validate_model_name(model)
    with ledger.locked(model):
        state = ledger.require(model, action="start the analysis")
        if state.phase is Phase.ANALYZING:
            return state  # already in charge: resume where it stands
        check_transition(state.phase, Phase.ANALYZING, action="start the analysis")
        weight = plan.steps[0]
        status = AnalysisStatus(plan=plan, since=time.time())
        new = with_canary_at(
            state,
            weight,
            phase=Phase.ANALYZING,
            analysis=status.to_json(),
            servers=moves.at_step(plan, 0),
        )
        return moves.record(
            state,
            new,
            action=f"analysis started at {weight}%",
            reason=f"steps {','.join(map(str, plan.steps))}, threshold {plan.threshold}",
        )


def advance(
    ledger: Ledger,
    model: str,
    provider: MetricsProvider,
    *,
    promote: Finish,
    rollback: Finish,
    moves: ServerMoves,
    patience: float | None = None,
) -> RolloutState:
    """One analysis step: read live figures, decide, record the decision and why.

    The canary is on the servers of the wave its step belongs to (``moves``): a step into
    a wider wave loads it on the new servers before any traffic goes there.

    Pass: next weight, or ``promote`` past the last step. Fail: one more failed check,
    ``rollback`` at the threshold. No data: nothing moves. Unreadable metrics: one more
    metrics error; at its own limit MetricsUnavailableError is raised and the canary keeps
    its weight. Outside the analyzing phase it changes nothing, so calling it again is safe.
    With ``patience`` (the long-running manager) the step is taken only when due
    (``AnalysisStatus.due``); otherwise (the ``rollout`` driving it) always.
    """
    model = validate_model_name(model)
    with ledger.locked(model):
        state = ledger.require(model, action="advance")
        if state.phase is not Phase.ANALYZING or state.analysis is None:
            return state
        assert state.stable is not None and state.canary is not None
        status = AnalysisStatus.from_json(state.analysis)
        now = time.time()
        if patience is not None and not status.due(now, patience=patience):
            return state
        reading: Snapshot | MetricsUnavailableError
        try:
            reading = provider.snapshot(model)
        except MetricsUnavailableError as exc:
            reading = exc
        stable, canary = judged_series(state.stable, state.canary, state.cohort)
        step = decide(
            status,
            reading,
            stable=stable,
            canary=canary,
            weight=state.weights.get(state.canary, 0),
            at=now,
            baseline=None if state.cohort is None else baseline_words(state.cohort),
        )
        at = step.status.step
        new = with_canary_at(
            state,
            step.weight,
            phase=Phase.ANALYZING,
            analysis=step.status.to_json(),
            servers=moves.at_step(status.plan, at),
        )
        new = moves.record(state, new, action=step.action, reason=step.reason, details=step.details)
        if step.then is Then.PROMOTE:
            return promote(new, reason=step.why)
        if step.then is Then.ROLL_BACK:
            return rollback(new, reason=step.why)
        if step.then is Then.STOP:
            assert isinstance(reading, MetricsUnavailableError)
            raise MetricsUnavailableError(step.why) from reading
        return new


def stop_analysis(ledger: Ledger, model: str, reason: str) -> RolloutState | None:
    """Record why a running analysis stopped (a signal, an error) while the canary keeps
    its weight, so the history says what stopped it; None when no analysis is in charge
    (it ended, or a person took over)."""
    model = validate_model_name(model)
    with ledger.locked(model):
        state = ledger.require(model, action="stop the analysis")
        if state.phase is not Phase.ANALYZING:
            return None
        weight = state.weights.get(state.canary, 0) if state.canary else 0
        return ledger.record(
            state,
            replace(state),
            action=f"analysis stopped at {weight}%",
            reason=f"{reason}; run rollout again to resume",
        )
