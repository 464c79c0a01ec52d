"""The resident memory of an embedded tritonserver and every process it started (one Python
backend stub per model instance), for the memory gates on CPU servers.

Triton reports no memory of its own process: ``nv_cpu_memory_used_bytes`` is the whole
host's (measured: 1.30 GB on both of two servers on one machine, as ``free`` says for the
host), and a canary's stubs are separate processes, so the figure is read from ``/proc``
by the process that runs the server (``repo-manager serve --process-metrics-port``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from repo_manager.metrics import metric_names as names

__all__ = ["ResidentMemoryCollector", "tree_resident_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(proc: Path) -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from every ``/proc/PID/stat``."""
    tree: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_resident_bytes(pid: int, *, proc: Path = Path("/proc")) -> int | None:
    """Resident bytes of ``pid`` and all its descendants (None: ``pid`` is gone)."""
    tree = _children(proc)
    total, pending, found = 0, [pid], False
    while pending:
        current = pending.pop()
        try:
            resident_pages = int((proc / str(current) / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found = True
        total += resident_pages * _PAGE
        pending.extend(tree.get(current, ()))
    return total if found else None


class ResidentMemoryCollector(Collector):
    """``repo_manager_server_resident_bytes{server}`` of one server, read at each scrape."""

    def __init__(self, *, server: str, pid: Callable[[], int | None]) -> None:
        #: How clients reach the server (its gRPC URL): the memory gates name it.
        self.server = server
        self.pid = pid

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            names.SERVER_RESIDENT,
            "Resident memory of the tritonserver process and every process it started "
            "(backend stubs), in bytes.",
            labels=["server"],
        )
        pid = self.pid()
        resident = None if pid is None else tree_resident_bytes(pid)
        if resident is not None:
            family.add_metric([self.server], float(resident))
        yield family
