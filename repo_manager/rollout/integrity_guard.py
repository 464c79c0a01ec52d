"""Before a move: is what the rollout serves still what was published?

Every command that loads versions or moves traffic (publish, set-weight, promote,
rollback, policy, the unpinned mode, an analysis step, reconcile: ``serve`` and the
long-running manager too, after a Triton restart) asks the guard first. It checks the
model's config against its seal and stable and canary against their manifests
(``integrity``), and then:

- a tampered **canary** loses its traffic: it is rolled back (the history says why) and
  the command fails in one line naming the file;
- a tampered **stable** (or config) cannot be replaced by anything verified without a
  person, so the command fails loudly, nothing is loaded (Triton keeps serving the copy it
  loaded before the change; ``FleetApplier`` never names the version in a load call again
  while its files differ), and the history records it, once per finding;
- ``promote`` may still go ahead with a tampered stable (a verified canary replaces it),
  and ``rollback`` with a tampered canary (it is what the rollback removes).

``FleetApplier`` checks again before every load call, so nothing is loaded unverified
even by a path that skips the guard.
"""

from __future__ import annotations

from dataclasses import dataclass

from repo_manager.errors import IntegrityError
from repo_manager.rollout.applier import FleetApplier
from repo_manager.rollout.ledger import Ledger
from repo_manager.rollout.retirement import Retirement
from repo_manager.state import RolloutState

__all__ = ["IntegrityGuard", "Tolerate"]


@dataclass(kw_only=True, frozen=True)
class Tolerate:
    """What one command may go ahead with (the move replaces the tampered version)."""

    stable: bool = False
    canary: bool = False


class IntegrityGuard:
    """Checks a model's served versions before a move (the caller holds its lock)."""

    def __init__(self, applier: FleetApplier, ledger: Ledger, retirement: Retirement) -> None:
        self.applier = applier
        self.ledger = ledger
        self.retirement = retirement

    def check(self, state: RolloutState, tolerate: Tolerate = Tolerate()) -> RolloutState:
        """Raise IntegrityError unless ``state`` may move (see the module docstring);
        returns the state (as recorded, when the check recorded something)."""
        model = state.model
        config = self.applier.repository.require_config(model)
        found = self.applier.repository.config_problem(model, config)
        if found is not None:
            state = self._record_once(state, f"refused the config of {model}", found)
            raise IntegrityError(
                f"{model} refused: {found}; nothing of {model} is loaded until the config is "
                "restored (Triton keeps serving what it loaded)"
            )
        verifier = self.applier.verifier
        stable = state.stable
        found = None if stable is None else verifier.problem(model, stable)
        if stable is not None and found is not None and not tolerate.stable:
            state = self._record_once(state, f"refused stable {stable}", found)
            raise IntegrityError(self._stable_words(state, stable, found))
        canary = state.canary
        found = None if canary is None else verifier.problem(model, canary)
        if canary is None or found is None or tolerate.canary:
            return state
        # Only progressing and analyzing have a canary, and both may roll back.
        rolled = self.retirement.rollback(state, reason=f"refused canary {canary}: {found}")
        raise IntegrityError(
            f"{model} version {canary} refused: {found}; rolled back: stable "
            f"{rolled.stable} serves 100%"
        )

    def findings(self, state: RolloutState) -> dict[str, str]:
        """What of the model is not what was published, moving nothing (``status``):
        "config" and each version the rollout serves -> why."""
        repository = self.applier.repository
        found = {
            "config": repository.config_problem(state.model, repository.require_config(state.model))
        }
        for version in state.serving_versions:
            found[version] = self.applier.verifier.problem(state.model, version)
        return {what: why for what, why in found.items() if why is not None}

    def _stable_words(self, state: RolloutState, stable: str, found: str) -> str:
        """The loud line for a tampered stable: what happens, and the way out."""
        ways = ["restore its files (they must match its manifest)"]
        canary = state.canary
        if canary is not None and self.applier.verifier.problem(state.model, canary) is None:
            ways.append(f"promote the verified canary {canary}")
        return (
            f"STABLE {state.model} version {stable} is not what was published: {found}; "
            "Triton keeps serving the copy it loaded before, and these files are never "
            f"loaded; {' or '.join(ways)}"
        )

    def _record_once(self, state: RolloutState, action: str, reason: str) -> RolloutState:
        """Record a refusal in the history, unless the last entry says the same."""
        last = state.history[-1] if state.history else None
        if last is not None and last.action == action and last.reason == reason:
            return state
        return self.ledger.record_setting(state, state, action=action, reason=reason)
