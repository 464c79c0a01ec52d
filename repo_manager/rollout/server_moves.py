"""Limit a canary to some servers, and widen or narrow that set, without a failed request.

Ordering, as for versions (``manager``'s docstring): the canary is loaded and READY on a
server (every load verified) before the routing table sends it traffic there, and a
server leaves the set in the table, then Routers get ``drain_seconds`` to follow, and
only then is the canary unloaded there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from repo_manager.rollout.applier import FleetApplier
from repo_manager.rollout.ledger import KEEP, Keep, Ledger
from repo_manager.rollout.settings import AnalysisPlan
from repo_manager.server_selection import select_servers
from repo_manager.state import RolloutState

__all__ = ["ServerMoves", "servers_words", "union"]


def union(
    fleet: Sequence[str], a: tuple[str, ...] | None, b: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """The servers of ``a`` and ``b`` (None: every server), in fleet order."""
    if a is None or b is None:
        return None
    both = set(a) | set(b)
    return tuple(url for url in fleet if url in both) or tuple(sorted(both))


def servers_words(servers: Sequence[str] | None) -> str:
    """A canary's servers in a sentence: "on every server", "only on a:8001, b:8001"."""
    return "on every server" if servers is None else f"only on {', '.join(servers)}"


class ServerMoves:
    """Chooses a canary's servers by name and moves it onto or off servers."""

    def __init__(self, applier: FleetApplier, ledger: Ledger) -> None:
        self.applier = applier
        self.ledger = ledger

    def select(
        self, servers: Sequence[str] | None, exclude: Sequence[str] | None
    ) -> tuple[str, ...] | None:
        """The fleet's servers that ``--servers`` minus ``--exclude`` name (None: all);
        one line for a name no server of the fleet has (``server_selection``)."""
        return select_servers(self.applier.fleet.urls, servers, exclude)

    def check_waves(self, plan: AnalysisPlan) -> None:
        """Refuse, in one line and before anything moves, a wave naming no server."""
        for names in dict.fromkeys(plan.servers):
            self.select(names, None)

    def at_step(self, plan: AnalysisPlan, step: int) -> tuple[str, ...] | Keep | None:
        """The canary's servers at ``step`` of ``plan`` (its wave's names resolved now);
        KEEP when the plan has no waves."""
        names = plan.servers_at(step)
        return KEEP if names is None else self.select(names, None)

    def record(
        self,
        state: RolloutState,
        new: RolloutState,
        *,
        action: str,
        reason: str,
        details: dict[str, Any] | None = None,
    ) -> RolloutState:
        """Record ``new`` (whose canary may sit on other servers than in ``state``): load
        it where it is added first, unload it where it left only after the drain."""
        if new.servers == state.servers:
            return self.ledger.record(state, new, action=action, reason=reason, details=details)
        fleet = self.applier.fleet.urls
        wider = union(fleet, state.servers, new.servers)
        if wider != state.servers:
            self.applier.apply(replace(state, servers=wider))
        moved = f"canary {servers_words(new.servers)}"
        recorded = self.ledger.record(
            state,
            new,
            action=action,
            reason=f"{reason}; {moved}" if reason else moved,
            details=details,
        )
        if new.servers != wider:
            self.applier.drain()
            self.applier.apply(recorded)
        return recorded
