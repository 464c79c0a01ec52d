"""Phase timing for long commands (``publish --verbose``): what took the time, and progress.

One ``PhaseTimer`` per command: each ``with timer.phase("export"):`` prints a start line
and, when it ends, the phase's duration through the command's progress callback (stderr
under ``--verbose``, nothing otherwise). A phase that runs long (a TensorRT build, a slow
load) prints an "still ..." line every ``tick`` seconds, so a user sees it is alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["PhaseTimer"]


@dataclass(kw_only=True)
class PhaseTimer:
    """Durations (seconds) of named phases, in the order they ran."""

    progress: Callable[[str], None]
    label: str = ""
    tick: float = 5.0
    durations: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        prefix = f"{self.label}: " if self.label else ""
        self.progress(f"{prefix}{name} ...")
        started = time.perf_counter()
        done = threading.Event()

        def ticker() -> None:
            while not done.wait(self.tick):
                elapsed = time.perf_counter() - started
                self.progress(f"{prefix}{name}: still running, {elapsed:.0f} s")

        watcher = threading.Thread(target=ticker, name=f"phase-{name}", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
            elapsed = time.perf_counter() - started
            self.durations[name] = self.durations.get(name, 0.0) + elapsed
            self.progress(f"{prefix}{name} done in {elapsed:.2f} s")

    def summary(self) -> str:
        """``export 2.31 s, stage 0.05 s, ... (total 4.30 s)``."""
        parts = [f"{name} {seconds:.2f} s" for name, seconds in self.durations.items()]
        return ", ".join(parts) + f" (total {sum(self.durations.values()):.2f} s)"
