"""Promote and roll back: the two ways a canary's rollout ends, by one retirement.

Both send all traffic to the version kept and persist that (phase ``promoting`` or
``rolling_back``) before Triton is touched; then the public name is re-pointed, the
Routers get ``drain_seconds`` to follow, and only then is the retired version unloaded.
A manager that dies in between leaves the transient phase, and ``reconcile`` calls
``finish`` again, which does the same.

A canary limited to some servers: promote first loads it on every server (each load
verified, stable kept) and only then sends it all traffic, so the new stable is READY
everywhere before the old one is unloaded anywhere; a rollback keeps the limit while the
canary drains (it is only there) and unloads it wherever it is. Both end with no limit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from repo_manager.modelconfig import with_version_policy
from repo_manager.phases import Phase, check_transition
from repo_manager.rollout.applier import FleetApplier
from repo_manager.rollout.ledger import Ledger
from repo_manager.state import RolloutState
from repo_manager.unpinned import WEIGHTED

__all__ = ["PROMOTE", "ROLL_BACK", "Ending", "Retirement", "retired_words"]


@dataclass(kw_only=True, frozen=True)
class Ending:
    """One way a rollout ends: which version stays, the phases passed, the history words."""

    keeps_canary: bool
    via: Phase  # transient: persisted before Triton is touched
    final: Phase
    verb: str  # in a refusal: "cannot promote: ..."
    started: str  # history action when traffic moved
    done: str  # history action when the retired version is unloaded


PROMOTE = Ending(
    keeps_canary=True,
    via=Phase.PROMOTING,
    final=Phase.SUCCEEDED,
    verb="promote",
    started="promote",
    done="promoted",
)
ROLL_BACK = Ending(
    keeps_canary=False,
    via=Phase.ROLLING_BACK,
    final=Phase.ROLLED_BACK,
    verb="roll back",
    started="rollback",
    done="rolled back",
)


class Retirement:
    """Promotes or rolls back a model whose lock the caller holds."""

    def __init__(self, applier: FleetApplier, ledger: Ledger) -> None:
        self.applier = applier
        self.ledger = ledger

    def promote(self, state: RolloutState, *, reason: str = "") -> RolloutState:
        """The canary becomes stable at 100%; the old stable is drained, then unloaded."""
        return self._retire(state, PROMOTE, reason=reason)

    def rollback(self, state: RolloutState, *, reason: str = "") -> RolloutState:
        """Stable back to 100%; the canary is drained, then unloaded."""
        return self._retire(state, ROLL_BACK, reason=reason)

    def _retire(self, state: RolloutState, ending: Ending, *, reason: str) -> RolloutState:
        """Send 100% to the version kept (persisted as the transient phase), then finish."""
        check_transition(state.phase, ending.via, action=ending.verb)
        assert state.canary is not None and state.stable is not None
        keep, retire = state.canary, state.stable
        if not ending.keeps_canary:
            keep, retire = retire, keep
        self.applier.fleet.check_reachable()
        if ending.keeps_canary and state.servers is not None:
            # Everywhere first, while Routers still send it only to its own servers.
            self.applier.progress(f"loading {keep} on every server before it takes traffic")
            self.applier.apply(replace(state, servers=None))
        moving = RolloutState(
            model=state.model,
            phase=ending.via,
            stable=keep,
            retiring=retire,
            weights={keep: 100},
            policy=state.policy,
            analysis=state.analysis,
            unpinned=state.unpinned,
            unpinned_shadow=state.unpinned_shadow,
            servers=None if ending.keeps_canary else state.servers,
        )
        moving = self.ledger.record(state, moving, action=ending.started, reason=reason)
        return self.finish(moving, ending.final, action=ending.done)

    def finish(self, state: RolloutState, final: Phase, *, action: str) -> RolloutState:
        """Re-point the public name at the kept version, drain, unload the retired one.

        The first ``apply`` changes no version (both stay loaded; with ``block_bytecode``
        Triton keeps them as they are) and moves only the alias; after a crash, reconcile
        runs this again and it does the same.
        """
        retiring = state.retiring
        assert retiring is not None and state.stable is not None
        if self.applier.verifier.problem(state.model, retiring) is not None:
            # The apply leaves a tampered version out, i.e. unloads it: the public name and
            # the Routers must be off it first (the soak saw 415 failed unpinned requests
            # when a promote unloaded a tampered stable the public name still pinned).
            # Loading the public name as an ensemble makes Triton poll the versions model
            # it names and reload it from its config on disk, re-reading a version whose
            # files changed: that config must not name the tampered version by then, and
            # the reload drops it before the new ensemble replaces the old one (the soak
            # saw 1 of 1,326 unpinned requests fail in that gap). So the public name first
            # becomes the weighted one (a BLS model: no dependency, no reload) sending
            # everything to the version kept, and only then the ensemble again.
            if state.unpinned != WEIGHTED:
                self.applier.point_public(replace(state, unpinned=WEIGHTED))
                self.applier.drain()
            config = self.applier.repository.require_config(state.model)
            loaded = [v for v in self.applier.desired_versions(state) if v != retiring]
            self.applier.repository.write_config(state.model, with_version_policy(config, loaded))
            self.applier.point_public(state)
            self.applier.drain()
        self.applier.apply(state)
        self.applier.drain()
        done = RolloutState(
            model=state.model,
            phase=final,
            stable=state.stable,
            weights=dict(state.weights),
            policy=state.policy,
            analysis=state.analysis,  # kept: status shows the analysis that decided
            unpinned=state.unpinned,
            unpinned_shadow=state.unpinned_shadow,
        )
        kept = retiring in self.applier.desired_versions(done)
        self.applier.apply(done, gone=[] if kept else [retiring])
        return self.ledger.record(
            state,
            done,
            action=action,
            reason=f"public name {state.model} answers from {state.stable}; "
            + retired_words(retiring, kept=kept),
            public=state.stable,
        )


def retired_words(version: str, *, kept: bool) -> str:
    """What became of the retired version, as the history tells it."""
    if kept:
        return f"{version} kept loaded by the version policy (no traffic)"
    return f"unloaded {version}"
