"""Phase timing for long commands (``publish --verbose``): what took the time.

One ``PhaseTimer`` per command: each ``with timer.phase("export"):`` is a stage of the
command's ``Progress`` (one line with its elapsed time, see ``repo_manager.progress``) and
adds its duration to the summary the command prints and records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from repo_manager.progress import as_progress

__all__ = ["PhaseTimer"]


@dataclass(kw_only=True)
class PhaseTimer:
    """Durations (seconds) of named phases, in the order they ran."""

    #: The command's Progress, or a plain line callback (then shown as plain lines).
    progress: Callable[[str], None]
    label: str = ""
    durations: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        prefix = f"{self.label}: " if self.label else ""
        started = time.perf_counter()
        try:
            with as_progress(self.progress).stage(f"{prefix}{name}"):
                yield
        finally:
            elapsed = time.perf_counter() - started
            self.durations[name] = self.durations.get(name, 0.0) + elapsed

    def summary(self) -> str:
        """``export 2.31 s, stage 0.05 s, ... (total 4.30 s)``."""
        parts = [f"{name} {seconds:.2f} s" for name, seconds in self.durations.items()]
        return ", ".join(parts) + f" (total {sum(self.durations.values()):.2f} s)"
