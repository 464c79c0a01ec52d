"""The python backend's stub processes of a running tritonserver, read from /proc (Linux).

Triton 2.51 starts one ``triton_python_backend_stub`` child per loaded model instance;
its argv is (observed with the embedded server)::

    <backends>/python/triton_python_backend_stub <repository>/<model>/<version>/model.py
        triton_python_backend_shm_region_<uuid> 1048576 1048576 <tritonserver pid>
        <backends>/python 336 <model>_0_0 DEFAULT

A new stub for ``.../<model>/<version>/model.py`` (a changed PID) is the evidence that
Triton re-initialized that version (DESIGN.md, "Facts verified"). While a version is being
re-initialized, the replaced stub lingers for a while beside its successor, so one
(model, version) can have two stubs at once; the newest is the one serving. (With an
``instance_group`` count above 1 each instance has its own stub, ``<model>_0_<i>``.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

STUB_NAME = "triton_python_backend_stub"
_INSTANCE = re.compile(r"^(.+)_\d+_\d+$")
_SHM = "triton_python_backend_shm_region_"
PROC = Path("/proc")


@dataclass(kw_only=True, frozen=True)
class StubProcess:
    """One stub: the model folder and version of the ``model.py`` it runs, its PID and RSS."""

    model: str  # the Triton model name (e.g. ``yolov8s.versions``)
    version: str
    pid: int
    rss_bytes: int


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; ``comm`` may hold spaces and parentheses."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return text.rsplit(")", 1)[1].split()


def _all_parents() -> dict[int, int]:
    """PID -> parent PID for every process now."""
    parents: dict[int, int] = {}
    for entry in os.listdir(PROC):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), not ``pid`` itself."""
    children: dict[int, list[int]] = {}
    for child, parent in _all_parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of one process in bytes (0 when it is gone or a zombie)."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # "VmRSS:  108100 kB"
    return 0


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` plus all its descendants (pages shared between them count in each)."""
    return sum(rss_bytes(p) for p in [pid, *descendants(pid)])


def _argv(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def model_file(argv: list[str]) -> tuple[str, str] | None:
    """(model, version) of the ``.../<model>/<version>/<file>.py`` argument, if any.

    The model is named by the instance-name argument (``<model>_<group>_<index>``) when
    there is one: a model read from S3 runs from a local copy in a temporary folder whose
    name is not the model's.
    """
    for position, arg in enumerate(argv[1:], start=1):
        path = PurePosixPath(arg)
        if path.suffix == ".py" and path.parent.name.isdigit() and path.parent.parent.name:
            instance = next(
                (
                    m.group(1)
                    for a in argv[position + 1 :]
                    if not a.startswith(_SHM) and (m := _INSTANCE.match(a))
                ),
                None,
            )
            return instance or path.parent.parent.name, path.parent.name
    return None


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The stubs below ``server_pid``, oldest first (by start time, then PID)."""
    found: list[tuple[int, StubProcess]] = []
    for pid in descendants(server_pid):
        argv = _argv(pid)
        if not argv or not any(STUB_NAME in a for a in argv):
            continue
        where = model_file(argv)
        fields = _stat_fields(pid)
        if where is None or fields is None:
            continue
        started = int(fields[19])  # field 22, starttime (clock ticks after boot)
        model, version = where
        found.append(
            (started, StubProcess(model=model, version=version, pid=pid, rss_bytes=rss_bytes(pid)))
        )
    found.sort(key=lambda item: (item[0], item[1].pid))
    return [stub for _, stub in found]


def stub_pids(server_pid: int) -> dict[tuple[str, str], int]:
    """(model folder, version) -> PID of its stub; the newest where a replaced one lingers."""
    return {(s.model, s.version): s.pid for s in stub_processes(server_pid)}
