"""Which process is which: a PID told apart from a later process that reuses it.

A process killed outright (SIGKILL, the OOM killer) cleans nothing up: what it held (a
shared-memory region, a manager's S3 lock) stays. Whoever finds such a leftover may take
it back only when its owner provably ended, judged from /proc: same PID namespace (PIDs
mean nothing across namespaces), and the PID gone, a zombie, or now another process with
another start time. Anything ambiguous counts as alive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["ProcessId", "pid_namespace"]


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; ``comm`` may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def pid_namespace() -> int | None:
    """This process's PID namespace (the inode of /proc/self/ns/pid; None: no /proc)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclass(kw_only=True, frozen=True)
class ProcessId:
    """A process, told apart from any later one that reuses its PID."""

    namespace: int
    pid: int
    start: int  # clock ticks after boot (/proc/PID/stat field 22)

    @classmethod
    def current(cls) -> Any:
        """This process (None where /proc cannot say: nothing of it is then reclaimed)."""
        namespace, fields = pid_namespace(), _stat_fields(os.getpid())
        if namespace is None or fields is None:
            return None
        return cls(namespace=namespace, pid=os.getpid(), start=int(fields[19]))

    def is_dead(self) -> bool:
        """True only when this process provably ended (a zombie has ended)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # another user's process: it exists; its start time says whether it is ours
        fields = _stat_fields(self.pid)
        if fields is None:
            return False  # hidden by /proc's mount options, or racing its exit: keep
        return fields[0] in ("Z", "X") or int(fields[19]) != self.start

    def is_dead_here(self) -> bool:
        """Dead, and in this PID namespace (a PID of another namespace says nothing)."""
        return self.namespace == pid_namespace() and self.is_dead()
