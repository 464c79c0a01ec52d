"""``status MODEL --watch``: a live view of one rollout until it reaches a terminal phase.

On a terminal each frame is redrawn in place; otherwise (a pipe, a log) the output is
append-only and escape-free: a frame when something was recorded, preceded by the
history entries recorded since the last one. Live per-version figures are the difference
between readings of the metrics source (over the last ``WINDOW`` seconds), so the first
frame has none yet.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repo_manager.analysis import readings
from repo_manager.cli.render import watch_text
from repo_manager.errors import MetricsUnavailableError
from repo_manager.metric_sources import in_cohort
from repo_manager.phases import STEADY_PHASES, Phase
from repo_manager.resource_gates import resource_readings
from repo_manager.state import RolloutState, Transition

if TYPE_CHECKING:
    from repo_manager.analysis import Snapshot

__all__ = ["CLEAR", "RECENT", "WINDOW", "Watch"]

#: Cursor home and clear screen: the frame is redrawn in place on a terminal.
CLEAR = "\x1b[H\x1b[2J"
#: History entries a frame shows on a terminal (and the first plain frame).
RECENT = 5
#: Seconds the live figures span once the watch has run that long (steadier than one
#: interval's figures; the first frame has none, the next ones span what was read).
WINDOW = 10.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%H:%M:%S")


@dataclass(kw_only=True)
class Watch:
    """The loop, given how to read the status and the metrics (a unit test passes fakes)."""

    #: The status document and the state it was made from.
    read: Callable[[], tuple[dict[str, Any], RolloutState]]
    #: Cumulative per-version counters; raises MetricsUnavailableError.
    sample: Callable[[], Snapshot]
    write: Callable[[str], None]
    tty: bool
    interval: float
    #: Set by a signal: stop watching (the rollout goes on).
    stop: threading.Event = field(default_factory=threading.Event)
    #: Names the metrics source in the frame.
    source: str = ""
    clock: Callable[[], float] = time.monotonic
    #: Readings of the last ``WINDOW`` seconds, oldest first (live figures span them).
    _readings: deque[tuple[float, Snapshot]] = field(default_factory=deque)
    #: The servers' memory at the last reading (``resource_gates.resource_readings``).
    _memory: dict[str, dict[str, float]] = field(default_factory=dict)

    def run(self) -> RolloutState:
        """Draw until the phase is terminal (at once if it already is) or ``stop`` is set;
        returns the last state read."""
        shown: int | None = None
        while True:
            doc, state = self.read()
            terminal = Phase(doc["phase"]) in STEADY_PHASES
            live, note, seconds = (None, f"rollout over: {doc['phase']}", None)
            if not terminal:
                live, note, seconds = self._live(doc)
            if self.tty:
                recent = state.history[-RECENT:]
                self.write(CLEAR + self._frame(doc, live, note, seconds, recent))
            elif shown != state.generation:
                recent = self._since(state, shown)
                self.write(self._frame(doc, live, note, seconds, recent) + "\n")
                shown = state.generation
            if terminal or self.stop.wait(self.interval):
                return state

    def _frame(
        self,
        doc: dict[str, Any],
        live: Any,
        note: str,
        seconds: float | None,
        recent: list[Transition],
    ) -> str:
        return watch_text(
            doc,
            live=live,
            note=note,
            seconds=seconds,
            recent=recent,
            now=_now(),
            memory=self._memory,
        )

    @staticmethod
    def _since(state: RolloutState, shown: int | None) -> list[Transition]:
        """The entries recorded after generation ``shown`` (the last few at first)."""
        count = RECENT if shown is None else state.generation - shown
        return state.history[max(0, len(state.history) - count) :]

    def _live(self, doc: dict[str, Any]) -> tuple[Any, str, float | None]:
        """Per source and role, the figures since the previous reading; or None and why."""
        try:
            snapshot = self.sample()
        except MetricsUnavailableError as exc:
            self._readings.clear()
            return None, f"metrics unavailable: {exc}", None
        now = self.clock()
        self._memory = resource_readings(snapshot)
        kept = self._readings
        while len(kept) > 1 and now - kept[1][0] >= WINDOW:
            kept.popleft()
        kept.append((now, snapshot))
        if len(kept) == 1:
            return None, f"measuring ({self.source})", None
        roles = {"stable": doc["stable"]}
        if doc["canary"]:
            roles["canary"] = doc["canary"]
        if doc.get("cohort"):  # and their requests from the cohort (what the analysis judges)
            roles.update({f"{role}:in": in_cohort(v) for role, v in list(roles.items())})
        since, before = kept[0]
        seconds = now - since
        return readings(snapshot, before, roles, seconds=seconds), self.source, seconds
