"""What the picture of a rollout draws, as plain numbers, from the history alone: every
transition's category and the weights after it, and each judged analysis step's figures
(the source that judged most steps, the Routers' boxes per image, the servers' memory).
Pure: no matplotlib (``plot`` draws it), so tests check these numbers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from repo_manager.errors import InvalidInputError
from repo_manager.state import Transition

__all__ = ["PlotData", "StepReading", "category", "plot_data"]

#: Source preference when several judged equally many steps (the Router's figures are
#: what clients saw; Triton's what reached the server; shadow is mirrored traffic).
_PREFERENCE = ("router", "triton", "shadow")


def category(entry: Transition) -> str:
    """Which kind of mark a transition gets (a key of ``_KINDS``)."""
    action = entry.action
    if action.startswith("publish"):
        return "publish"
    if action.startswith(("promote", "promoted")):
        return "promote"
    if action.startswith(("rollback", "rolled back")):
        return "rollback"
    if action.startswith("analysis stopped"):
        return "stopped"
    if action.startswith("analysis started"):
        return "start"
    outcome = (entry.details or {}).get("analysis", {}).get("outcome")
    if outcome in ("pass", "fail"):
        return str(outcome)
    if action.startswith("analysis"):
        return "quiet"
    return "manual"


def _servers_moved(before: Transition | None, entry: Transition) -> str:
    """`` (canary on a:8001)`` when ``entry`` put the canary on other servers than the
    entry before it (a limit set, widened or narrowed; cleared: every server)."""
    if entry.servers == (before.servers if before else None) or entry.canary is None:
        return ""
    return f" (canary on {', '.join(entry.servers) if entry.servers else 'every server'})"


@dataclass(kw_only=True, frozen=True)
class StepReading:
    """One judged analysis step, from the chosen source (None: no figure that step)."""

    at: dt.datetime
    #: The canary judged (a new canary starts a new line).
    canary: str
    weight: int
    outcome: str
    #: Names of the gates that failed this step (e.g. ``max_latency_ratio[triton]``).
    failed: tuple[str, ...]
    canary_error_rate: float | None
    stable_error_rate: float | None
    canary_latency_ms: float | None
    stable_latency_ms: float | None
    max_error_rate: float
    #: The latency gate in ms: stable's latency times the plan's max ratio.
    max_latency_ms: float | None
    #: Boxes per image ``Router.detect`` counted (the Routers' readings, whichever source
    #: the other panels draw; None: no detect traffic). Its gate is a test of the two
    #: means (``max_box_count_z``), drawn as the steps it failed, not as a line.
    canary_boxes_per_image: float | None = None
    stable_boxes_per_image: float | None = None
    #: The highest share of memory in use on any device of the servers (a GPU, or the
    #: host), and its gate (``max_memory_share``); None where no source reports it.
    memory_share: float | None = None
    max_memory_share: float | None = None


@dataclass(kw_only=True, frozen=True)
class PlotData:
    """Everything the figure draws, as plain numbers (tests check these)."""

    times: list[dt.datetime]
    #: Version -> its weight after each transition: None before it was published and
    #: after the one that took it out of the routing table (which shows it at 0).
    weights: dict[str, list[int | None]]
    categories: list[str]
    actions: list[str]
    source: str | None
    steps: list[StepReading] = field(default_factory=list)
    #: The canary's weight inside its cohort after each transition (None: no cohort),
    #: and the rules in force, in the order they first stood.
    cohort: list[int | None] = field(default_factory=list)
    cohort_rules: list[str] = field(default_factory=list)


def _time(at: str) -> dt.datetime:
    return dt.datetime.fromisoformat(at)


def _source(entries: Sequence[Transition]) -> str | None:
    """The source whose canary readings cover the most steps."""
    counts: dict[str, int] = {}
    for e in entries:
        for source, roles in (e.details or {}).get("analysis", {}).get("readings", {}).items():
            if "canary" in roles:
                counts[source] = counts.get(source, 0) + 1
    if not counts:
        return None
    return max(_PREFERENCE, key=lambda s: (counts.get(s, 0), -_PREFERENCE.index(s)))


def _step(entry: Transition, source: str) -> StepReading | None:
    analysis = (entry.details or {}).get("analysis", {})
    roles = analysis.get("readings", {}).get(source)
    if analysis.get("outcome") not in ("pass", "fail") or not roles:
        return None
    canary, stable = roles.get("canary", {}), roles.get("stable", {})
    bounds = analysis["bounds"]
    stable_latency = stable.get("latency_ms")
    router = analysis["readings"].get("router", {})
    servers = analysis.get("servers", {}).values()
    shares = [float(d["memory_share"]) for d in servers if "memory_share" in d]
    return StepReading(
        at=_time(entry.at),
        canary=str(canary.get("version", entry.canary)),
        weight=int(analysis["weight"]),
        outcome=str(analysis["outcome"]),
        failed=tuple(g["name"] for g in analysis.get("gates", []) if not g["passed"]),
        canary_error_rate=canary.get("error_rate"),
        stable_error_rate=stable.get("error_rate"),
        canary_latency_ms=canary.get("latency_ms"),
        stable_latency_ms=stable_latency,
        max_error_rate=float(bounds["max_error_rate"]),
        max_latency_ms=None
        if stable_latency is None
        else stable_latency * float(bounds["max_latency_ratio"]),
        canary_boxes_per_image=router.get("canary", {}).get("boxes_per_image"),
        memory_share=max(shares) if shares else None,
        max_memory_share=bounds.get("max_memory_share"),
        stable_boxes_per_image=router.get("stable", {}).get("boxes_per_image"),
    )


def _weights_of(version: str, entries: Sequence[Transition]) -> list[int | None]:
    """``version``'s weight after each entry; 0 at the entry that retired it, None where
    it is not routed otherwise (no line: a version's life is where its line is)."""
    weights: list[int | None] = []
    for entry in entries:
        if version in entry.weights:
            weights.append(entry.weights[version])
        else:
            weights.append(0 if weights and weights[-1] not in (None, 0) else None)
    return weights


def plot_data(entries: Sequence[Transition]) -> PlotData:
    """What the figure of ``entries`` (oldest first) draws."""
    if not entries:
        raise InvalidInputError("no history to plot")
    versions = sorted({v for e in entries for v in e.weights}, key=int)
    source = _source(entries)
    steps = [s for e in entries if source and (s := _step(e, source)) is not None]
    return PlotData(
        times=[_time(e.at) for e in entries],
        weights={v: _weights_of(v, entries) for v in versions},
        categories=[category(e) for e in entries],
        actions=[
            e.action + _servers_moved(entries[i - 1] if i else None, e)
            for i, e in enumerate(entries)
        ],
        source=source,
        steps=steps,
        cohort=[None if e.cohort is None else int(e.cohort["weight"]) for e in entries],
        cohort_rules=list(dict.fromkeys(str(e.cohort["rule"]) for e in entries if e.cohort)),
    )
