"""The picture of a rollout (``history --plot FILE.png``): weights over time with every
transition marked, and each analysis step's per-version error rate and latency against
its gates.

``plot_data`` is pure (what is drawn, from the history alone); ``figure`` draws it with
matplotlib, which is imported only here and only when a plot is drawn (the ``plot``
extra), never at import: a Router or a manager never pays for it.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.errors import InvalidInputError
from repo_manager.history.plot_data import PlotData, StepReading, plot_data
from repo_manager.state import Transition

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PlotData", "StepReading", "figure", "plot_data", "write_plot"]

#: How each kind of transition is marked: (category, colour, marker).
_KINDS: dict[str, tuple[str, str, str]] = {
    "publish": ("publish", "tab:blue", "D"),
    "manual": ("set by hand / setting", "tab:gray", "s"),
    "pass": ("analysis passed", "tab:green", "^"),
    "fail": ("analysis check failed", "tab:red", "v"),
    "start": ("analysis started", "tab:purple", "o"),
    "quiet": ("baseline / no verdict / metrics error", "silver", "o"),
    "promote": ("promote", "darkgreen", "*"),
    "rollback": ("rollback", "darkred", "X"),
    "stopped": ("analysis stopped", "tab:orange", "P"),
}


def _matplotlib() -> Any:
    try:
        import matplotlib.dates as mdates
    except ImportError as exc:
        raise InvalidInputError(
            "history --plot needs matplotlib: pip install 'repo-manager[plot]'"
        ) from exc
    return mdates


def figure(entries: Sequence[Transition], *, model: str) -> Figure:
    """Four panels sharing the time axis: weights with every transition marked, then the
    canary's and stable's error rate, latency and boxes per image per analysis step with
    the gates; a fifth with the servers' memory where a source reported it."""
    mdates = _matplotlib()
    from matplotlib.figure import Figure

    data = plot_data(entries)
    memory = any(s.memory_share is not None for s in data.steps)
    panels = 5 if memory else 4
    fig = Figure(figsize=(12, 11 + 2.5 * memory), dpi=100, layout="constrained")
    axes = fig.subplots(
        panels, 1, sharex=True, gridspec_kw={"height_ratios": [1.3] + [1] * (panels - 1)}
    )
    top, errors, latency, boxes = axes[:4]
    _draw_weights(top, data)
    _draw_steps(errors, latency, boxes, data)
    if memory:
        _draw_memory(axes[4], data.steps)
    bottom = axes[-1]
    start, end = data.times[0], data.times[-1]
    fig.suptitle(
        f"{model}: {len(entries)} transitions, {start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC",
        fontsize=13,
    )
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    within_a_day = end - start < dt.timedelta(days=1)
    bottom.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M:%S", tz=dt.UTC)
        if within_a_day
        else mdates.ConciseDateFormatter(locator, tz=dt.UTC)
    )
    bottom.set_xlabel("time (UTC)")
    return fig


def _draw_weights(ax: Any, data: PlotData) -> None:
    for version, weights in data.weights.items():
        shown = [float("nan") if w is None else float(w) for w in weights]
        ax.plot(
            data.times, shown, drawstyle="steps-post", linewidth=2.2, label=f"v{version} weight"
        )
    if data.cohort_rules:
        rules = " / ".join(f"'{r}'" for r in data.cohort_rules)
        ax.plot(
            data.times,
            [float("nan") if w is None else float(w) for w in data.cohort],
            drawstyle="steps-post",
            linewidth=1.6,
            linestyle="--",
            color="black",
            label=f"canary weight inside cohort {rules}",
        )
    seen: set[str] = set()
    notes: list[tuple[dt.datetime, str, str]] = []
    close = (data.times[-1] - data.times[0]) * 0.02
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
        if kind in ("publish", "promote", "rollback", "stopped", "fail") or "(canary on" in action:
            text = action.removeprefix("analysis: ")
            if notes and when - notes[-1][0] <= close:  # one label for moves made together
                text = f"{notes[-1][1]} / {text}"
                notes.pop()
            notes.append((when, text, colour))
    for when, text, colour in notes:
        ax.annotate(
            text,
            (when, 108),
            xytext=(4, -6),
            textcoords="offset points",
            rotation=-90,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1},
            fontsize=7,
            va="top",
            color=colour,
        )
    ax.set_ylim(-5, 115)
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_ylabel("weight (%)")
    ax.set_title("weights after each transition (marks: every transition)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def _draw_steps(errors: Any, latency: Any, boxes: Any, data: PlotData) -> None:
    where = f"{data.source} metrics" if data.source else "no analysis step recorded readings"
    panels = (
        (errors, "error rate", "error rate (%)", "error_rate", "max_error_rate", 100.0, where),
        (latency, "mean latency", "latency (ms)", "latency_ms", "max_latency_ms", 1.0, where),
        (
            boxes,
            "boxes per image",
            "boxes",
            "boxes_per_image",
            "max_box_count_z",
            1.0,
            "router metrics",
        ),
    )
    for ax, title, unit, figure_name, gate, scale, source in panels:
        ax.set_title(f"{title} per analysis step ({source})", fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        if not data.steps:
            ax.text(0.5, 0.5, "no analysis steps", transform=ax.transAxes, ha="center")
            continue
        _draw_panel(ax, data.steps, title, figure_name, gate, scale)


def _draw_panel(
    ax: Any, steps: list[StepReading], title: str, figure_name: str, gate: str, scale: float
) -> None:
    """Canary and stable per step, the gate (dashed), and each step whose gate of this
    panel failed (a cross); each canary's steps are one line, labelled with its version."""

    def values(items: list[StepReading], name: str) -> list[float]:
        return [float("nan") if (v := getattr(s, name)) is None else v * scale for s in items]

    # One line per canary (each rollout), labelled once: a new canary is another line.
    groups: list[list[StepReading]] = []
    for i, step in enumerate(steps):
        if not i or step.canary != steps[i - 1].canary:
            groups.append([])
        groups[-1].append(step)
    gate_label = {
        "max_error_rate": "gate: max error rate",
        "max_latency_ms": "gate: stable latency x max ratio",
    }.get(gate)
    for n, group in enumerate(groups):
        at = [s.at for s in group]
        hidden = "_" if n else ""  # matplotlib leaves labels starting with "_" out of legends
        # The canary is drawn over stable where they coincide.
        for role, colour, marker, z in (
            ("canary", "tab:orange", "o", 3),
            ("stable", "tab:blue", "s", 2),
        ):
            ax.plot(
                at,
                values(group, f"{role}_{figure_name}"),
                marker=marker,
                color=colour,
                zorder=z,
                label=f"{hidden}{role} {title.removeprefix('mean ')}",
            )
        if gate_label is not None:  # a bound in the panel's unit
            ax.plot(
                at,
                values(group, gate),
                drawstyle="steps-mid",
                linestyle="--",
                color="tab:red",
                label=f"{hidden}{gate_label}",
            )
        if len(groups) > 1 and (y := values(group, f"canary_{figure_name}")[0]) == y:
            ax.annotate(
                f"canary v{group[0].canary}",
                (group[0].at, y),
                xytext=(-8, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=8,
                color="tab:orange",
            )
    # Gates are named as --live-gate takes them (max_error_rate[triton]); entries recorded
    # before that carry the bare name (error_rate[triton]).
    names = (gate, gate.removeprefix("max_"))
    failed = [s for s in steps if any(g.startswith(names) for g in s.failed)]
    if failed:
        ax.plot(
            [s.at for s in failed],
            values(failed, f"canary_{figure_name}"),
            linestyle="none",
            marker="X",
            markersize=12,
            color="darkred",
            zorder=4,
            label="failed check",
        )
    # A little room below 0, so a series that stays at 0 is not hidden by the axis.
    ax.set_ylim(bottom=-0.04 * ax.get_ylim()[1])
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def _draw_memory(ax: Any, steps: list[StepReading]) -> None:
    """The servers' highest share of memory in use per step, its gate, the failed steps."""
    shown = [s for s in steps if s.memory_share is not None]
    at = [s.at for s in shown]
    ax.set_title("servers' memory in use per analysis step (highest device)", fontsize=10)
    ax.set_ylabel("memory in use (%)")
    ax.grid(True, alpha=0.3)
    shares = [100 * (s.memory_share or 0) for s in shown]
    ax.plot(at, shares, marker="o", color="tab:purple", label="highest share in use")
    bounds = [100 * (s.max_memory_share or 1.0) for s in shown]
    ax.plot(at, bounds, drawstyle="steps-mid", linestyle="--", color="tab:red", label="gate")
    failed = [s for s in shown if any("memory" in g or "resident" in g for g in s.failed)]
    ax.plot(
        [s.at for s in failed],
        [100 * (s.memory_share or 0) for s in failed],
        linestyle="none",
        marker="X",
        markersize=12,
        color="darkred",
        label="failed check",
    )
    ax.set_ylim(0, 105)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def plot_png(entries: Sequence[Transition], *, model: str) -> bytes:
    """The figure as PNG bytes (a post-mortem stores it beside the state)."""
    out = io.BytesIO()
    figure(entries, model=model).savefig(out, format="png")
    return out.getvalue()


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
