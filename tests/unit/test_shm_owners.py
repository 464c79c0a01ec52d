"""Which regions a sweep may reclaim: only provably dead owners' in this PID namespace.

Real files on /dev/shm's tmpfs and real processes (a finished child, a zombie, a reused
PID); Triton's side is a small fake listing registrations (the real one is proven in
tests/integration/test_shm_lifecycle.py). The sweep tests list a private folder: in the
parallel suite every starting server and Router sweeps /dev/shm itself, and once took a
test's dead-owner file first (CI, 2026-12-07).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from tritonclient.utils import InferenceServerException

from repo_manager.shm import SharedMemoryChannel
from repo_manager.shm import _ExitGuard as ExitGuard
from repo_manager.shm_owners import Owner, leftover_regions, reclaim_dead_regions

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(
    not SHM.is_dir() or Owner.current() is None,
    reason="needs Linux /dev/shm and /proc (run on Linux)",
)


def me() -> Owner:
    owner = Owner.current()
    assert owner is not None
    return owner


def finished_child() -> Owner:
    """A process that ran and was reaped: its PID is free."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = replace(me(), pid=child.pid)
    child.wait()
    return owner


def name_for(owner: Owner) -> str:
    return f"{owner.tag()}-{uuid.uuid4().hex[:8]}-0"


@pytest.fixture
def shm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on /dev/shm's tmpfs that only this test's sweeps list."""
    folder = SHM / f"repo-manager-test-{uuid.uuid4().hex}"
    folder.mkdir()
    monkeypatch.setattr("repo_manager.shm_owners._SHM_DIR", str(folder))
    yield folder
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()


def make(shm: Path, owner: Owner) -> str:
    name = name_for(owner)
    (shm / name).write_bytes(b"\0" * 64)
    return name


class Registrations:
    """Triton's system shared-memory status and unregister, for the sweep."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.unregistered: list[str] = []

    def get_system_shared_memory_status(self, **kw: Any) -> dict[str, Any]:
        return {"regions": {n: {"name": n, "key": "/" + n} for n in self.names}}

    def unregister_system_shared_memory(self, name: str = "", **kw: Any) -> None:
        self.unregistered.append(name)
        self.names.remove(name)


def test_a_region_name_carries_its_owner() -> None:
    owner = me()
    assert Owner.of(name_for(owner)) == owner
    assert owner.pid == os.getpid() and not owner.is_dead()
    for foreign in ("repo-manager-shm-123-0a1b2c3d-0", "triton_python_backend_shm_region_1"):
        assert Owner.of(foreign) is None


def test_dead_owners_regions_are_reclaimed_and_live_ones_kept(shm: Path) -> None:
    mine = make(shm, me())
    gone = make(shm, finished_child())
    reused = make(shm, replace(me(), start=me().start + 1))  # my PID, another process
    dead = sorted([f"{shm}/{gone}", f"{shm}/{reused}"])
    assert sorted(leftover_regions()) == dead
    assert sorted(reclaim_dead_regions()) == dead
    assert (shm / mine).exists() and not (shm / gone).exists() and not (shm / reused).exists()


def test_a_zombie_owner_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        owner = replace(me(), pid=child.pid)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert owner.is_dead()
    finally:
        child.wait()


def test_regions_of_another_pid_namespace_or_format_are_never_touched(shm: Path) -> None:
    elsewhere = make(shm, replace(finished_child(), namespace=me().namespace + 1))
    legacy = f"repo-manager-shm-{finished_child().pid}-0a1b2c3d-0"
    (shm / legacy).write_bytes(b"\0")
    assert reclaim_dead_regions() == []
    assert (shm / elsewhere).exists() and (shm / legacy).exists()


def test_the_sweep_unregisters_only_dead_owners_registrations_from_triton(shm: Path) -> None:
    live, dead = name_for(me()), name_for(finished_child())
    other = name_for(replace(finished_child(), namespace=me().namespace + 1))
    triton = Registrations([live, dead, other, "someone-elses-region"])
    assert reclaim_dead_regions(triton) == [f"registered {dead}"]
    assert triton.unregistered == [dead]


def test_a_server_that_cannot_list_registrations_fails_no_sweep(shm: Path) -> None:
    gone = make(shm, finished_child())
    assert reclaim_dead_regions(object()) == [f"{shm}/{gone}"]


class RecordingClient(Registrations):
    def __init__(self) -> None:
        super().__init__([])
        self.registered: list[str] = []

    def register_system_shared_memory(self, name: str, key: str, size: int, **kw: Any) -> None:
        self.registered.append(name)
        self.names.append(name)


def test_a_forked_child_closing_the_channel_leaves_the_parents_regions() -> None:
    client = RecordingClient()
    channel = SharedMemoryChannel(client, "det-versions")
    region = channel._region(64)
    pid = os.fork()
    if pid == 0:  # the child: close, then report what it unregistered
        channel.close()
        os._exit(len(client.unregistered) + 10 * (not (SHM / region.name).exists()))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (SHM / region.name).exists()
    channel.close()
    assert not (SHM / region.name).exists() and client.unregistered == [region.name]


def test_the_exit_guard_leaves_an_applications_own_signal_handler_alone() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    channel = SharedMemoryChannel(RecordingClient(), "det-versions")
    previous = signal.signal(signal.SIGHUP, mine)
    try:
        ExitGuard().watch(channel)
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_exit_guard_is_installed_only_from_the_main_thread() -> None:
    channel = SharedMemoryChannel(RecordingClient(), "det-versions")
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        guard = ExitGuard()
        thread = threading.Thread(target=guard.watch, args=(channel,))
        thread.start()
        thread.join()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        guard.watch(channel)
        assert signal.getsignal(signal.SIGHUP) == guard._on_signal
    finally:
        signal.signal(signal.SIGHUP, previous)


class HeldClient(RecordingClient):
    """Refuses an unregister while a request holds the region, as Triton 2.51 does."""

    def __init__(self, held_for: int) -> None:
        super().__init__()
        self.refusals = held_for

    def unregister_system_shared_memory(self, name: str = "", **kw: Any) -> None:
        if self.refusals:
            self.refusals -= 1
            raise InferenceServerException(
                f"Cannot unregister shared memory region '{name}', it is currently in use."
            )
        super().unregister_system_shared_memory(name, **kw)


def test_close_unregisters_a_region_once_the_request_holding_it_ends() -> None:
    client = HeldClient(held_for=3)
    channel = SharedMemoryChannel(client, "det-versions")
    region = channel._region(64)
    channel.close()
    assert client.unregistered == [region.name] and client.refusals == 0
    assert not (SHM / region.name).exists()


def test_a_region_held_past_the_deadline_is_still_unlinked() -> None:
    client = HeldClient(held_for=10**9)
    channel = SharedMemoryChannel(client, "det-versions")
    region = channel._region(64)
    with patch("repo_manager.shm._IN_USE_RETRY_S", 0.1):
        channel.close()
    assert client.unregistered == [] and not (SHM / region.name).exists()
