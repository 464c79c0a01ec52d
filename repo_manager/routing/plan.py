"""Where a request goes: the immutable plan built from a routing table.

The split rule itself (key positions, the layout of the [0, 100) range) is ``split``'s,
and the cohort rule (which requests the canary's cohort holds) is ``cohort``'s, both
shared with the weighted public name's Triton model.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from repo_manager.errors import InvalidInputError, RoutingError
from repo_manager.metrics.router import IN, NO_COHORT, OUT, RouterMetrics, VersionMetrics
from repo_manager.routing import cohort as cohorts
from repo_manager.routing import split
from repo_manager.state import RoutingTable

__all__ = ["Attributes", "Key", "RoutePlan", "compile_cohort", "key_point"]

logger = logging.getLogger(__name__)

Key = str | bytes | int
#: A request's attributes, which the cohort rule reads (``{"line": "3"}``).
Attributes = Mapping[str, object]
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


def compile_cohort(rule: str) -> cohorts.Cohort:
    """A cohort rule compiled, or one line saying what is wrong with it."""
    try:
        return cohorts.parse(rule)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def _label(cohort: cohorts.Cohort | None, inside: bool) -> str:
    """The ``cohort`` label of a request's series: none without a rule, else in or out."""
    return NO_COHORT if cohort is None else IN if inside else OUT


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
    #: Each version's counters (outside the cohort when there is one).
    metrics: dict[str, VersionMetrics] = field(default_factory=dict)
    #: The canary's cohort, compiled once (None: every request follows ``versions``).
    cohort: cohorts.Cohort | None = None
    #: Inside the cohort: the same layout at the cohort's weight (so a sticky key keeps
    #: its place), and each version's counters labelled ``cohort="in"``.
    inside_versions: tuple[str, ...] = ()
    inside_thresholds: tuple[float, ...] = ()
    inside_metrics: dict[str, VersionMetrics] = field(default_factory=dict)
    #: Where a time-window cohort reads the time (tests put it inside or outside).
    clock: Callable[[], float] = time.time
    #: The only servers a version may be sent to (a canary limited to some servers);
    #: a version not named here goes to any server.
    where: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        model: str,
        table: RoutingTable | None,
        metrics: RouterMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> RoutePlan:
        """The plan of ``table``; each version's counters come from ``metrics``.

        A cohort rule that does not compile (the manager never writes one) puts nobody in
        the cohort, said in the log: traffic keeps flowing by the ordinary weights.
        """
        if table is None:
            return cls(table=None, versions=(), thresholds=(), fallback={}, clock=clock)
        stable, canary = table.stable, table.canary
        order, versions, thresholds = split.layout(stable, canary, table.weights)
        fallback: dict[str, str | None] = {}
        for v in order:
            if v == stable:
                fallback[v] = canary if canary is not None and canary != stable else None
            else:
                fallback[v] = stable
        cohort: cohorts.Cohort | None = None
        inside_versions: tuple[str, ...] = ()
        inside_thresholds: tuple[float, ...] = ()
        setting = table.cohort
        if setting is not None and canary is not None and stable is not None:
            try:
                cohort = cohorts.parse(setting["rule"])
            except ValueError as exc:
                logger.warning("routing table of %s: %s; nobody is in the cohort", model, exc)
            else:
                inside, inside_bounds = split.cohort_layout(stable, canary, setting["weight"])
                inside_versions, inside_thresholds = tuple(inside), tuple(inside_bounds)

        def series(inside: bool) -> dict[str, VersionMetrics]:
            label = _label(cohort, inside)
            return {v: metrics.version(model, v, label) for v in order} if metrics else {}

        return cls(
            table=table,
            versions=tuple(versions),
            thresholds=tuple(thresholds),
            fallback=fallback,
            metrics=series(inside=False),
            cohort=cohort,
            inside_versions=inside_versions,
            inside_thresholds=inside_thresholds,
            inside_metrics=series(inside=True) if cohort is not None else {},
            clock=clock,
            where={}
            if table.servers is None or canary is None or canary == stable
            else {canary: frozenset(table.servers)},
        )

    def label(self, inside: bool) -> str:
        """The ``cohort`` label of a request's series (``inside`` the cohort or not)."""
        return _label(self.cohort, inside)

    def inside(self, attributes: Attributes | None) -> bool:
        """True when a request with ``attributes`` is in the canary's cohort now."""
        cohort = self.cohort
        if cohort is None:
            return False
        return cohort.matches(attributes, self.clock() if cohort.timed else 0.0)

    def choose(self, key: Key | None = None, attributes: Attributes | None = None) -> str:
        """One routing decision: ``pick`` once ``inside`` has answered, the two calls the
        Router makes per request (``bench/router_overhead.py`` times this; under a
        microsecond with a cohort rule too: the clock is read only for an hour window)."""
        return self.pick(key, self.inside(attributes))

    def pick(self, key: Key | None = None, inside: bool = False) -> str:
        """The decision once ``inside`` (the cohort's answer, ``inside()``) is known."""
        if inside:
            versions, thresholds = self.inside_versions, self.inside_thresholds
        else:
            versions, thresholds = self.versions, self.thresholds
        if len(versions) == 1:
            return versions[0]
        if not versions:
            raise RoutingError("no routing table: the model has no version to route to")
        at = _random() * 100.0 if key is None else _point(key_bytes(key))
        return _choose(versions, thresholds, at)
