"""A person in the loop of an analysis: approve the step it waits for, reject the canary,
pause it, resume it.

The analysis waits before each weight of ``plan.approve_before`` (``--steps
10,25,pause,50,100`` or ``--approve-before 50``) and keeps judging the canary where it is,
so a canary that goes bad while nobody answers is still rolled back. ``approve`` moves it
to the awaited weight at once; ``reject`` rolls it back; ``pause``/``resume`` hold any
analysis the same way by hand. Each is one recorded decision, with who made it.
"""

from __future__ import annotations

from dataclasses import replace

from repo_manager.errors import IllegalTransitionError
from repo_manager.history.archive import recorded_by
from repo_manager.links import Link, LinkSigner, claim
from repo_manager.names import validate_model_name
from repo_manager.phases import Phase
from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.rollout.analysis_step import Finish
from repo_manager.rollout.ledger import Ledger, with_canary_at
from repo_manager.rollout.server_moves import ServerMoves
from repo_manager.state import RolloutState

__all__ = ["Approvals"]


class Approvals:
    """Decisions a person takes on a running analysis (``approve``, ``reject``, ``pause``,
    ``resume``)."""

    def __init__(self, ledger: Ledger, *, rollback: Finish, moves: ServerMoves) -> None:
        self.ledger = ledger
        self.rollback = rollback
        #: Puts the canary on the servers of the approved step's wave.
        self.moves = moves

    def approve(self, model: str, *, reason: str = "") -> RolloutState:
        """Move the canary to the weight the analysis waits to reach."""
        model = validate_model_name(model)
        with self.ledger.locked(model):
            state, status = self._analysis(model, "approve")
            if status.waiting is None:
                raise IllegalTransitionError(
                    f"cannot approve: the analysis of {model} waits for no approval"
                    + (f" ({status.held})" if status.held else "")
                )
            weight = status.waiting
            moved = replace(
                status,
                step=status.step + 1,
                waiting=None,
                approved=(*status.approved, weight),
            )
            new = with_canary_at(
                state,
                weight,
                phase=Phase.ANALYZING,
                analysis=moved.to_json(),
                servers=self.moves.at_step(status.plan, moved.step),
            )
            return self.moves.record(
                state,
                new,
                action=f"analysis: approved, now {weight}%",
                reason=_why(reason),
            )

    def reject(self, model: str, *, reason: str = "") -> RolloutState:
        """Roll the canary back, whatever the analysis would decide."""
        model = validate_model_name(model)
        with self.ledger.locked(model):
            state, _ = self._analysis(model, "reject")
            return self.rollback(state, reason=f"rejected: {_why(reason)}")

    def pause(self, model: str, *, reason: str = "") -> RolloutState:
        """Hold the canary at its weight; the analysis keeps judging it."""
        return self._hold(model, paused=True, reason=reason)

    def resume(self, model: str, *, reason: str = "") -> RolloutState:
        """Let passed steps move the canary on again."""
        return self._hold(model, paused=False, reason=reason)

    def by_link(self, link: Link, signer: LinkSigner) -> RolloutState:
        """Take the decision a signed link carries, once (``links``): refused in one line
        when forged, expired, used, or for a version that is no longer the canary."""
        with self.ledger.locked(link.model):
            state = self.ledger.require(link.model, action=link.action)
            signer.check(link, canary=state.canary)
            claim(self.ledger.storage, link)
        decide = {"approve": self.approve, "reject": self.reject, "resume": self.resume}
        return decide[link.action](link.model, reason="one-click link")

    def _hold(self, model: str, *, paused: bool, reason: str) -> RolloutState:
        model = validate_model_name(model)
        action = "pause" if paused else "resume"
        with self.ledger.locked(model):
            state, status = self._analysis(model, action)
            if (status.paused_by is not None) == paused:
                raise IllegalTransitionError(
                    f"cannot {action}: the analysis of {model} is "
                    + ("paused already" if paused else "not paused")
                )
            held = replace(status, paused_by=recorded_by() if paused else None)
            new = replace(state, analysis=held.to_json())
            return self.ledger.record(
                state, new, action=f"analysis: {action}d", reason=_why(reason)
            )

    def _analysis(self, model: str, action: str) -> tuple[RolloutState, AnalysisStatus]:
        state = self.ledger.require(model, action=action)
        if state.phase is not Phase.ANALYZING or state.analysis is None:
            raise IllegalTransitionError(
                f"cannot {action}: no analysis is in charge of {model} (phase {state.phase.value})"
            )
        return state, AnalysisStatus.from_json(state.analysis)


def _why(reason: str) -> str:
    """The reason as recorded (who took the decision is in every history entry)."""
    return reason or "by hand"
