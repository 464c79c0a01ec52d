"""The persisted ledger of rollouts: one state document per model, one write per decision.

Every decision goes through ``Ledger.record`` (a phase move, checked against the phase
table) or ``Ledger.record_setting`` (a change that moves no phase): a history entry says
what happened and why, the whole document is replaced in one atomic write (so every
reader, Routers included, sees one consistent state), and the new state is exposed as
gauges when the ledger was given the manager's metrics (a command that serves them).
Callers hold ``Ledger.locked(model)`` around read-decide-record. A publish also keeps a
journal from writing its version to recording it, so that ``reconcile`` can undo one
whose manager was killed.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from repo_manager.errors import IllegalTransitionError
from repo_manager.history.archive import HISTORY_LIMIT, archive_overflow, recorded_by
from repo_manager.names import validate_model_name
from repo_manager.phases import Phase, check_transition
from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.state import (
    MOVE,
    SETTING,
    PendingPublish,
    RolloutState,
    Transition,
    load_state,
    publish_journal_key,
    state_key,
    utc_now,
)
from repo_manager.storage import Storage

if TYPE_CHECKING:
    from repo_manager.metrics import ManagerMetrics

__all__ = ["KEEP", "Keep", "Ledger", "with_canary_at"]


class Keep(enum.Enum):
    """A setting left as it stands (``with_canary_at``'s default cohort)."""

    KEEP = "keep"


KEEP = Keep.KEEP


class Ledger:
    """The rollout state of every model of one repository (in its storage)."""

    def __init__(
        self,
        storage: Storage,
        *,
        metrics: ManagerMetrics | None = None,
        recorded: Callable[[RolloutState], None] | None = None,
        history_limit: int = HISTORY_LIMIT,
    ) -> None:
        """``recorded`` is called with every state once it is persisted (the weighted
        public name follows each recorded weight through it). The state document keeps
        the newest ``history_limit`` entries, the archive the rest."""
        self.storage = storage
        self.metrics = metrics
        self.recorded = recorded
        self.history_limit = history_limit

    @contextmanager
    def locked(self, model: str) -> Iterator[None]:
        """One manager at a time decides for ``model`` (across processes and machines)."""
        with self.storage.lock(f"{model}.lock"):
            yield

    def load(self, model: str) -> RolloutState | None:
        return load_state(self.storage, validate_model_name(model))

    def require(self, model: str, *, action: str) -> RolloutState:
        state = self.load(model)
        if state is None:
            raise IllegalTransitionError(f"cannot {action}: {model} was never published")
        return state

    def record(
        self,
        state: RolloutState | None,
        new: RolloutState,
        *,
        action: str,
        reason: str = "",
        public: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> RolloutState:
        """Check the move against the phase table, append history, persist atomically.

        ``public`` is the version the public name answers from after this move, when the
        move re-pointed it; otherwise the last entry's value is carried on. ``details``:
        the figures behind ``reason`` (an analysis step's readings). Returns the state as
        persisted.
        """
        source = state.phase if state else None
        check_transition(source, new.phase, action=action)
        return self._persist(
            state,
            new,
            action=action,
            reason=reason,
            public=public,
            phases=(source.value if source else None, new.phase.value),
            details=details,
        )

    def record_setting(
        self, state: RolloutState, new: RolloutState, *, action: str, reason: str = ""
    ) -> RolloutState:
        """Record a change that moves no phase (a version policy, a refused version): its
        history entry names no phases, so every entry that names them is a move the phase
        table allows."""
        if new.phase is not state.phase:
            raise IllegalTransitionError(f"cannot {action}: a setting change moves no phase")
        return self._persist(state, new, action=action, reason=reason, public=None, phases=None)

    def _persist(
        self,
        state: RolloutState | None,
        new: RolloutState,
        *,
        action: str,
        reason: str,
        public: str | None,
        phases: tuple[str | None, str] | None,
        details: dict[str, Any] | None = None,
    ) -> RolloutState:
        if public is None and state is not None and state.history:
            public = state.history[-1].public
        entry = Transition(
            at=utc_now(),
            action=action,
            from_phase=phases[0] if phases else None,
            to_phase=phases[1] if phases else None,
            stable=new.stable,
            canary=new.canary,
            weights=dict(new.weights),
            reason=reason,
            public=public,
            kind=MOVE if phases else SETTING,
            who=recorded_by(),
            details=details,
            cohort=new.cohort,
            servers=None if new.servers is None else list(new.servers),
        )
        # Older entries go to the archive first, so the state never names entries that
        # are nowhere (see history/archive.py).
        history, archived = archive_overflow(
            self.storage,
            new.model,
            [*(state.history if state else []), entry],
            state.archived if state else 0,
            self.history_limit,
        )
        recorded = replace(
            new,
            generation=(state.generation if state else 0) + 1,
            history=history,
            archived=archived,
        )
        self.storage.write_bytes_atomic(state_key(recorded.model), recorded.to_json())
        self.expose(recorded)
        if self.recorded is not None:
            self.recorded(recorded)
        return recorded

    # -- the publish journal ----------------------------------------------------------------

    def pending_publish(self, model: str) -> PendingPublish | None:
        """The publish of ``model`` a manager began and neither recorded nor undid."""
        key = publish_journal_key(model)
        data = self.storage.read_bytes(key)
        if data is None:
            return None
        return PendingPublish.from_json(data, source=f"{self.storage.location}/{key}")

    def begin_publish(self, model: str, version: str, *, created_model: bool) -> None:
        """Journal the publish before its version reaches the repository."""
        pending = PendingPublish(
            version=version, created_model=created_model, pid=os.getpid(), at=utc_now()
        )
        self.storage.write_bytes_atomic(publish_journal_key(model), pending.to_json())

    def end_publish(self, model: str) -> None:
        """The publish was recorded or undone: nothing is pending any more."""
        if self.storage.read_bytes(publish_journal_key(model)) is not None:
            self.storage.write_bytes_atomic(publish_journal_key(model), PendingPublish.cleared())

    def journaled_models(self) -> list[str]:
        """Models that have a publish journal (a first publish may have no state yet)."""
        prefix, suffix = publish_journal_key("\0").split("\0")
        return sorted(
            name[len(prefix) : -len(suffix)]
            for name in self.storage.list_dir("")
            if name.startswith(prefix) and name.endswith(suffix)
        )

    def expose(self, state: RolloutState) -> None:
        """The state as the manager's gauges (weight, phase, failed checks, last gates)."""
        if self.metrics is None:
            return
        analysis = None if state.analysis is None else AnalysisStatus.from_json(state.analysis)
        last = analysis.last if analysis else None
        self.metrics.rollout_state(
            state.model,
            phase=state.phase.value,
            phases=[p.value for p in Phase],
            canary_weight=state.weights.get(state.canary, 0) if state.canary else 0,
            stable=state.stable,
            canary=state.canary,
            failed_checks=analysis.failed_checks if analysis else 0,
            metrics_errors=analysis.metrics_errors if analysis else 0,
            gates=[(g.name, g.value, g.passed) for g in (last.gates if last else ())],
        )


def with_canary_at(
    state: RolloutState,
    weight: int,
    *,
    phase: Phase,
    canary: str | None = None,
    analysis: dict[str, Any] | None = None,
    cohort: dict[str, Any] | Keep | None = KEEP,
    servers: tuple[str, ...] | Keep | None = KEEP,
) -> RolloutState:
    """``state``'s stable beside its canary (or the new ``canary``) at ``weight`` percent.

    ``analysis`` is the analysis document in charge (None: nobody, e.g. a person set it).
    ``cohort``: the canary's cohort (``RoutingTable.cohort``); by default ``state``'s for
    its own canary (an analysis step moves the weight outside the cohort and keeps it),
    none for a new canary.
    ``servers``: the canary's servers (None: every server); by default ``state``'s.
    """
    canary = canary or state.canary
    assert state.stable is not None and canary is not None
    return RolloutState(
        model=state.model,
        phase=phase,
        stable=state.stable,
        canary=canary,
        weights={state.stable: 100 - weight, canary: weight},
        policy=state.policy,
        analysis=analysis,
        unpinned=state.unpinned,
        unpinned_shadow=state.unpinned_shadow,
        cohort=(state.cohort if canary == state.canary else None)
        if isinstance(cohort, Keep)
        else cohort,
        servers=state.servers if isinstance(servers, Keep) else servers,
    )
