"""Client traffic from several threads during a rollout; every answer and failure recorded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Seconds between two requests of one client thread whose traffic only has to be in flight
#: through every move (zero-failure tests): steady load, up to 20 requests a second a thread,
#: not a loop that takes every free cycle from the tests running beside it (the suite runs in
#: parallel processes; the python backend's stubs took 61% of its CPU). Traffic that a live
#: analysis judges passes ``pause=0``: its verdict needs enough requests in every interval.
PAUSE = 0.05


@dataclass(kw_only=True)
class Traffic:
    """Each served request as (time, version); each failure as its repr."""

    served: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def versions_since(self, since: float) -> Counter[str]:
        with self.lock:
            return Counter(v for t, v in self.served if t >= since)


@contextmanager
def client_traffic(
    send: Callable[[int], str], threads: int, *, pause: float = PAUSE
) -> Iterator[Traffic]:
    """Call ``send(i)`` (returns the version that served) in a loop from ``threads`` threads,
    ``pause`` seconds apart in each."""
    record = Traffic()
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                version = send(i)
                with record.lock:
                    record.served.append((time.monotonic(), version))
            except Exception as exc:  # recorded: the assertion is that none happen
                with record.lock:
                    record.failures.append(repr(exc))
            i += 1
            if pause:
                stop.wait(pause)

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield record
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
