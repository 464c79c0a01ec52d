"""The picture of a rollout (``history --plot FILE.png``): weights over time with every
transition marked, and each analysis step's per-version error rate and latency against
its gates.

``plot_data`` is pure (what is drawn, from the history alone); ``figure`` draws it with
matplotlib, which is imported only here and only when a plot is drawn (the ``plot``
extra), never at import: a Router or a manager never pays for it.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.errors import InvalidInputError
from repo_manager.state import Transition

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PlotData", "StepReading", "figure", "plot_data", "write_plot"]

#: Source preference when several judged equally many steps (the Router's figures are
#: what clients saw; Triton's what reached the server; shadow is mirrored traffic).
_PREFERENCE = ("router", "triton", "shadow")

#: How each kind of transition is marked: (category, colour, marker).
_KINDS: dict[str, tuple[str, str, str]] = {
    "publish": ("publish", "tab:blue", "D"),
    "manual": ("set by hand / setting", "tab:gray", "s"),
    "pass": ("analysis passed", "tab:green", "^"),
    "fail": ("analysis check failed", "tab:red", "v"),
    "quiet": ("baseline / no verdict / metrics error", "silver", "o"),
    "promote": ("promote", "darkgreen", "*"),
    "rollback": ("rollback", "darkred", "X"),
    "stopped": ("analysis stopped", "tab:orange", "P"),
}


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
    outcome = (entry.details or {}).get("analysis", {}).get("outcome")
    if outcome in ("pass", "fail"):
        return str(outcome)
    if action.startswith("analysis"):
        return "quiet"
    return "manual"


@dataclass(kw_only=True, frozen=True)
class StepReading:
    """One judged analysis step, from the chosen source (None: no figure that step)."""

    at: dt.datetime
    weight: int
    outcome: str
    canary_error_rate: float | None
    stable_error_rate: float | None
    canary_latency_ms: float | None
    stable_latency_ms: float | None
    max_error_rate: float
    #: The latency gate in ms: stable's latency times the plan's max ratio.
    max_latency_ms: float | None


@dataclass(kw_only=True, frozen=True)
class PlotData:
    """Everything the figure draws, as plain numbers (tests check these)."""

    times: list[dt.datetime]
    #: Version -> its weight after each transition (0 when not routed).
    weights: dict[str, list[int]]
    categories: list[str]
    actions: list[str]
    source: str | None
    steps: list[StepReading] = field(default_factory=list)


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
    return StepReading(
        at=_time(entry.at),
        weight=int(analysis["weight"]),
        outcome=str(analysis["outcome"]),
        canary_error_rate=canary.get("error_rate"),
        stable_error_rate=stable.get("error_rate"),
        canary_latency_ms=canary.get("latency_ms"),
        stable_latency_ms=stable_latency,
        max_error_rate=float(bounds["max_error_rate"]),
        max_latency_ms=None
        if stable_latency is None
        else stable_latency * float(bounds["max_latency_ratio"]),
    )


def plot_data(entries: Sequence[Transition]) -> PlotData:
    """What the figure of ``entries`` (oldest first) draws."""
    if not entries:
        raise InvalidInputError("no history to plot")
    versions = sorted({v for e in entries for v in e.weights}, key=int)
    source = _source(entries)
    steps = [s for e in entries if source and (s := _step(e, source)) is not None]
    return PlotData(
        times=[_time(e.at) for e in entries],
        weights={v: [e.weights.get(v, 0) for e in entries] for v in versions},
        categories=[category(e) for e in entries],
        actions=[e.action for e in entries],
        source=source,
        steps=steps,
    )


def _matplotlib() -> Any:
    try:
        import matplotlib.dates as mdates
    except ImportError as exc:
        raise InvalidInputError(
            "history --plot needs matplotlib: pip install 'repo-manager[plot]'"
        ) from exc
    return mdates


def figure(entries: Sequence[Transition], *, model: str) -> Figure:
    """Three panels sharing the time axis: weights with every transition marked, then the
    canary's and stable's error rate and latency per analysis step with the gates."""
    mdates = _matplotlib()
    from matplotlib.figure import Figure

    data = plot_data(entries)
    fig = Figure(figsize=(12, 9), dpi=100, layout="constrained")
    top, errors, latency = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [1.3, 1, 1]}
    )
    _draw_weights(top, data)
    _draw_steps(errors, latency, data)
    start, end = data.times[0], data.times[-1]
    fig.suptitle(
        f"{model}: {len(entries)} transitions, {start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC",
        fontsize=13,
    )
    locator = mdates.AutoDateLocator()
    latency.xaxis.set_major_locator(locator)
    latency.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    latency.set_xlabel("time (UTC)")
    return fig


def _draw_weights(ax: Any, data: PlotData) -> None:
    for version, weights in data.weights.items():
        ax.plot(
            data.times, weights, drawstyle="steps-post", linewidth=2.2, label=f"v{version} weight"
        )
    seen: set[str] = set()
    for when, kind, action in zip(data.times, data.categories, data.actions, strict=True):
        name, colour, marker = _KINDS[kind]
        ax.axvline(when, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(
            [when],
            [108],
            marker=marker,
            color=colour,
            markersize=9,
            linestyle="none",
            label=None if kind in seen else name,
            gid="transition",
        )
        seen.add(kind)
        if kind in ("publish", "promote", "rollback", "stopped", "fail"):
            ax.annotate(
                action, (when, 108), xytext=(4, -6), textcoords="offset points",
                rotation=-90, fontsize=7, va="top", color=colour,
            )
    ax.set_ylim(-5, 115)
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_ylabel("weight (%)")
    ax.set_title("weights after each transition (marks: every transition)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def _draw_steps(errors: Any, latency: Any, data: PlotData) -> None:
    steps = data.steps
    where = f"{data.source} metrics" if data.source else "no analysis step recorded readings"
    errors.set_title(f"error rate per analysis step ({where})", fontsize=10)
    latency.set_title(f"mean latency per analysis step ({where})", fontsize=10)
    errors.set_ylabel("error rate (%)")
    latency.set_ylabel("latency (ms)")
    for ax in (errors, latency):
        ax.grid(True, alpha=0.3)
    if not steps:
        for ax in (errors, latency):
            ax.text(0.5, 0.5, "no analysis steps", transform=ax.transAxes, ha="center")
        return
    at = [s.at for s in steps]

    def pct(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None else v * 100 for v in values]

    def ms(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    style = {"canary": ("tab:orange", "o"), "stable": ("tab:blue", "s")}
    for role in ("canary", "stable"):
        colour, marker = style[role]
        errors.plot(
            at, pct([getattr(s, f"{role}_error_rate") for s in steps]),
            marker=marker, color=colour, label=f"{role} error rate",
        )
        latency.plot(
            at, ms([getattr(s, f"{role}_latency_ms") for s in steps]),
            marker=marker, color=colour, label=f"{role} latency",
        )
    errors.plot(
        at, pct([s.max_error_rate for s in steps]), drawstyle="steps-mid", linestyle="--",
        color="tab:red", label="gate: max error rate",
    )
    latency.plot(
        at, ms([s.max_latency_ms for s in steps]), drawstyle="steps-mid", linestyle="--",
        color="tab:red", label="gate: stable latency x max ratio",
    )
    failed = [s for s in steps if s.outcome == "fail"]
    if failed:
        errors.plot(
            [s.at for s in failed], pct([s.canary_error_rate for s in failed]),
            linestyle="none", marker="X", markersize=12, color="darkred", label="failed check",
        )
        latency.plot(
            [s.at for s in failed], ms([s.canary_latency_ms for s in failed]),
            linestyle="none", marker="X", markersize=12, color="darkred", label="failed check",
        )
    errors.set_ylim(bottom=0)
    latency.set_ylim(bottom=0)
    for ax in (errors, latency):
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def write_plot(entries: Sequence[Transition], path: Path, *, model: str) -> None:
    """Write the figure as a PNG at ``path``: staged beside it, then renamed."""
    fig = figure(entries, model=model)
    target = Path(path)
    if not target.parent.is_dir():
        raise InvalidInputError(f"cannot write {target}: no folder {target.parent}")
    fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fig.savefig(out, format="png")
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
