"""Changes that move no phase: the version policy and what the public name does with
requests that name no version. Each is applied to the servers, then recorded as a
setting (``Ledger.record_setting``), never as a phase move."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from repo_manager.errors import InvalidInputError
from repo_manager.names import validate_model_name
from repo_manager.rollout.applier import FleetApplier
from repo_manager.rollout.ledger import Ledger
from repo_manager.rollout.settings import VersionPolicy
from repo_manager.state import RolloutState
from repo_manager.unpinned import WEIGHTED, check_mode, check_shadow, check_weighted_classes

__all__ = ["SettingChanges"]


class SettingChanges:
    """Sets a model's version policy and unpinned mode; the caller holds no lock."""

    def __init__(self, applier: FleetApplier, ledger: Ledger) -> None:
        self.applier = applier
        self.ledger = ledger

    def set_policy(self, model: str, policy: dict[str, Any] | None) -> RolloutState:
        """Keep extra versions loaded (e.g. the previous stable, for a fast rollback)."""
        model = validate_model_name(model)
        checked = VersionPolicy.from_document(policy)
        repository = self.applier.repository
        with self.ledger.locked(model):
            state = self.ledger.require(model, action="set the policy")
            named = checked.specific if checked and checked.specific else ()
            missing = [v for v in named if not repository.has_version(model, v)]
            if missing:
                raise InvalidInputError(
                    f"{model} has no version {', '.join(missing)} in {repository.location}"
                )
            self.applier.fleet.check_reachable()
            new = replace(state, policy=None if checked is None else checked.to_document())
            before = set(self.applier.desired_versions(state))
            after = set(self.applier.desired_versions(new))
            self.applier.apply(new, gone=sorted(before - after, key=int))
            action = f"policy {checked.to_document()}" if checked else "policy cleared"
            return self.ledger.record_setting(state, new, action=action)

    def set_unpinned(
        self, model: str, mode: str | None, *, shadow: float | None = None
    ) -> RolloutState:
        """What the public name does with requests that name no version: answer from
        stable only, or follow the rollout's weights (``unpinned`` package), mirroring
        ``shadow`` of stable's answers to the canary; None keeps what is set."""
        model = validate_model_name(model)
        shadow = None if shadow is None else check_shadow(shadow)
        with self.ledger.locked(model):
            state = self.ledger.require(model, action="set the unpinned mode")
            mode = check_mode(state.unpinned if mode is None else mode)
            # Back to stable mode ends a shadow that was set; asking for one there is refused.
            kept = state.unpinned_shadow if mode == WEIGHTED else 0.0
            share = kept if shadow is None else shadow
            if share and mode != WEIGHTED:
                raise InvalidInputError(
                    f"--shadow needs --unpinned {WEIGHTED}: with {mode} the public name "
                    "answers from stable only (the Router has its own shadow option)"
                )
            if mode == WEIGHTED and state.stable is not None and state.canary is not None:
                names = self.applier.repository.class_names
                check_weighted_classes(
                    model,
                    (state.stable, names(model, state.stable)),
                    (state.canary, names(model, state.canary)),
                )
            self.applier.fleet.check_reachable()
            new = replace(state, unpinned=mode, unpinned_shadow=share)
            self.applier.point_public(new)
            words = f"unpinned {mode}" + (f", shadow {share:g}" if share else "")
            return self.ledger.record_setting(state, new, action=words)
