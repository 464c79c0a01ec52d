"""Progress of long-running commands, shown the same way by each: export, upload, load and
warm-up, the golden set, each analysis step.

A command names its stages (``with progress.stage("export"):``); each gets one line on
stderr with its elapsed time, redrawn in place about twice a second on a terminal, and as
plain lines elsewhere (a start line, a "still running" line every ``tick`` seconds, an end
line), so that a log stays readable. Detail lines (``progress("loading ...")``) are shown
only under ``--verbose``. Nothing is shown when stderr is no terminal and ``--verbose`` was
not given: scripts keep their one-line errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Progress", "as_progress"]

_CLEAR = "\r\x1b[K"  # back to the line's start and erase it


@dataclass(kw_only=True)
class Progress:
    """Stage lines and detail lines of one command (callable: a detail line)."""

    #: Where plain lines go (detail lines, and stages when not ``live``); None: nowhere.
    emit: Callable[[str], None] | None = None
    #: A terminal: stages are redrawn in place on it (and their end lines kept there).
    live: TextIO | None = None
    #: Plain mode: seconds between the "still running" lines of a long stage.
    tick: float = 5.0
    #: Live mode: seconds between redraws.
    redraw: float = 0.5
    _stack: list[tuple[str, float]] = field(default_factory=list, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    @classmethod
    def for_stderr(cls, stream: TextIO, *, verbose: bool, write: Callable[[str], None]) -> Progress:
        """The command line's: live on a terminal, detail and plain lines under ``verbose``
        (``write`` prints one line on ``stream``)."""
        terminal = stream.isatty()
        return cls(emit=write if verbose else None, live=stream if terminal else None)

    @property
    def shown(self) -> bool:
        return self.emit is not None or self.live is not None

    def __call__(self, line: str) -> None:
        """A detail line (``--verbose`` only), above the live stage line if there is one."""
        if self.emit is None:
            return
        with self._lock:
            self._erase()
            self.emit(line)
            self._draw()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """One stage: its line while it runs, then ``NAME done in 1.23 s`` (or ``failed
        after``). Stages nest: the live line shows every open one."""
        if not self.shown:
            yield
            return
        started = time.monotonic()
        with self._lock:
            self._stack.append((name, started))
            if self.live is None:
                self._plain(f"{name} ...")
            else:
                self._draw()
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(name, started, done), name=f"progress-{name}", daemon=True
        )
        watcher.start()
        outcome = "failed after"
        try:
            yield
            outcome = "done in"
        finally:
            done.set()
            watcher.join()
            with self._lock:
                self._erase()
                self._stack.remove((name, started))
                self._line(f"{name} {outcome} {time.monotonic() - started:.2f} s")
                self._draw()

    def _watch(self, name: str, started: float, done: threading.Event) -> None:
        while not done.wait(self.redraw if self.live is not None else self.tick):
            with self._lock:
                if self.live is not None:
                    self._erase()
                    self._draw()
                else:
                    self._plain(f"{name}: still running, {time.monotonic() - started:.0f} s")

    def _line(self, text: str) -> None:
        """A line that stays: on the terminal when live, else a plain line."""
        if self.live is not None:
            self.live.write(text + "\n")
            self.live.flush()
        else:
            self._plain(text)

    def _plain(self, text: str) -> None:
        if self.emit is not None:
            self.emit(text)

    def _draw(self) -> None:
        if self.live is None or not self._stack:
            return
        now = time.monotonic()
        shown = " > ".join(f"{name} ... {now - started:.0f} s" for name, started in self._stack)
        self.live.write(shown)
        self.live.flush()

    def _erase(self) -> None:
        if self.live is not None and self._stack:
            self.live.write(_CLEAR)


def as_progress(progress: Callable[[str], None]) -> Progress:
    """``progress`` itself when it is a Progress, else one whose lines go to it (library
    callers that pass a plain callback get stage lines as plain lines)."""
    return progress if isinstance(progress, Progress) else Progress(emit=progress)
