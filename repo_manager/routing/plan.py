"""Where a request goes: the immutable plan built from a routing table.

The split rule itself (key positions, the layout of the [0, 100) range) is ``split``'s,
shared with the weighted public name's Triton model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from repo_manager.errors import InvalidInputError, RoutingError
from repo_manager.metrics.router import RouterMetrics, VersionMetrics
from repo_manager.routing import split
from repo_manager.state import RoutingTable

__all__ = ["Key", "RoutePlan", "key_point"]

Key = str | bytes | int
_random = random.random
_point = split.point
_choose = split.choose


def key_bytes(key: Key) -> bytes:
    """A routing key as the bytes ``split.point`` hashes (an int as its decimal text)."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise InvalidInputError(f"routing key must be str, bytes or int, not {type(key).__name__}")


def key_point(key: Key) -> float:
    """The fixed position of a sticky key in [0, 100) (``split.point``)."""
    return _point(key_bytes(key))


@dataclass(kw_only=True, frozen=True, slots=True)
class RoutePlan:
    """An immutable routing decision table built once per routing-table change.

    Swapped by one reference assignment, so request threads never lock: each request
    reads the plan in force (``TableWatcher.plan``) once and uses that snapshot throughout.
    """

    table: RoutingTable | None
    #: Versions with a share, in range order: stable lowest, the canary last (top).
    versions: tuple[str, ...]
    #: Upper bounds of every version's share but the last, scaled to [0, 100).
    thresholds: tuple[float, ...]
    #: Where a request goes when its version fails: canary -> stable, stable -> canary.
    fallback: dict[str, str | None]
    metrics: dict[str, VersionMetrics] = field(default_factory=dict)
    #: The only servers a version may be sent to (a canary limited to some servers);
    #: a version not named here goes to any server.
    where: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, model: str, table: RoutingTable | None, metrics: RouterMetrics | None = None
    ) -> RoutePlan:
        """The plan of ``table``; each version's counters come from ``metrics``."""
        if table is None:
            return cls(table=None, versions=(), thresholds=(), fallback={})
        stable, canary = table.stable, table.canary
        order, versions, thresholds = split.layout(stable, canary, table.weights)
        fallback: dict[str, str | None] = {}
        for v in order:
            if v == stable:
                fallback[v] = canary if canary is not None and canary != stable else None
            else:
                fallback[v] = stable
        return cls(
            table=table,
            versions=tuple(versions),
            thresholds=tuple(thresholds),
            fallback=fallback,
            metrics={v: metrics.version(model, v) for v in order} if metrics else {},
            where={}
            if table.servers is None or canary is None or canary == stable
            else {canary: frozenset(table.servers)},
        )

    def choose(self, key: Key | None = None) -> str:
        """One routing decision (well under a microsecond without a key)."""
        versions = self.versions
        if len(versions) == 1:
            return versions[0]
        if not versions:
            raise RoutingError("no routing table: the model has no version to route to")
        at = _random() * 100.0 if key is None else _point(key_bytes(key))
        return _choose(versions, self.thresholds, at)
