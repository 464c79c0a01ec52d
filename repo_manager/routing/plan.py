"""Where a request goes: sticky key positions and the immutable plan built from a table.

Layout of the [0, 100) range: stable takes the bottom, the canary the TOP ``w`` percent. A
sticky key hashes to a fixed point of that range, so a key on the canary stays on the canary
while its weight grows (the boundary only moves down), and keys move only at promote or
rollback.
"""

from __future__ import annotations

import bisect
import random
import zlib
from dataclasses import dataclass, field

from repo_manager.errors import InvalidInputError, RoutingError
from repo_manager.metrics.router import RouterMetrics, VersionMetrics
from repo_manager.state import RoutingTable

__all__ = ["Key", "RoutePlan", "key_point"]

Key = str | bytes | int
#: 53 mixed bits -> a float in [0, 100) with every value exactly representable.
_KEY_SCALE = 100.0 / float(1 << 53)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
# Bound once: a routing decision is measured in fractions of a microsecond.
_crc32 = zlib.crc32
_random = random.random


def key_point(key: Key) -> float:
    """The fixed position of a sticky key in [0, 100).

    ``crc32(utf-8 key)`` times the 64-bit golden-ratio constant, mod 2**64, top 53 bits,
    scaled to [0, 100). Not ``hash()``: Python salts string hashes per process, and a key
    must land on the same version in every client process (in any language) and after
    restarts. The multiply spreads crc32's linear structure: plain crc32 of sequential keys
    ("user-1", "user-2", ...) is measurably non-uniform; mixed, it passes a chi-square
    test like blake2b, at a third of blake2b's cost (about 0.2 µs against 0.6 µs).
    """
    if isinstance(key, str):
        data = key.encode()
    elif isinstance(key, bytes):
        data = key
    elif isinstance(key, int) and not isinstance(key, bool):
        data = str(key).encode()
    else:
        raise InvalidInputError(f"routing key must be str, bytes or int, not {type(key).__name__}")
    return (((_crc32(data) * _GOLDEN) & _MASK64) >> 11) * _KEY_SCALE


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

    @classmethod
    def build(
        cls, model: str, table: RoutingTable | None, metrics: RouterMetrics | None = None
    ) -> RoutePlan:
        """The plan of ``table``; each version's counters come from ``metrics``."""
        if table is None:
            return cls(table=None, versions=(), thresholds=(), fallback={})
        stable, canary = table.stable, table.canary
        named = [v for v in (stable, canary) if v is not None]
        others = sorted((v for v in table.weights if v not in named), key=_version_order)
        order = [v for v in (stable, *others, canary) if v is not None]
        order = list(dict.fromkeys(order))  # stable == canary must not count twice
        shares = [(v, table.weights.get(v, 0)) for v in order]
        shares = [(v, w) for v, w in shares if w > 0]
        if not shares and order:
            shares = [(order[0], 1)]  # no weights written: everything to stable
        total = float(sum(w for _, w in shares))
        thresholds, cumulative = [], 0
        for _, weight in shares[:-1]:
            cumulative += weight
            thresholds.append(cumulative * 100.0 / total)
        fallback: dict[str, str | None] = {}
        for v in order:
            if v == stable:
                fallback[v] = canary if canary is not None and canary != stable else None
            else:
                fallback[v] = stable
        return cls(
            table=table,
            versions=tuple(v for v, _ in shares),
            thresholds=tuple(thresholds),
            fallback=fallback,
            metrics={v: metrics.version(model, v) for v in order} if metrics else {},
        )

    def choose(self, key: Key | None = None) -> str:
        """One routing decision (well under a microsecond without a key)."""
        versions = self.versions
        if len(versions) == 1:
            return versions[0]
        if not versions:
            raise RoutingError("no routing table: the model has no version to route to")
        point = _random() * 100.0 if key is None else key_point(key)
        return versions[bisect.bisect_right(self.thresholds, point)]


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
