"""Waiting for a condition another thread or process brings about, without a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], timeout: float, *, every: float = 0.01) -> bool:
    """True as soon as ``check()`` is; False once ``timeout`` seconds passed without it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
