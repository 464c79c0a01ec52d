"""Shared-memory regions outlive no Router and no client process, against a real tritonserver.

A region is a file in /dev/shm plus a registration in Triton (which keeps its own mapping,
so the memory stays taken until it is unregistered). A Router dropped without ``close``
and a process that exits or is terminated release theirs; a process killed outright
(SIGKILL of its whole process group: nothing runs in it, its multiprocessing resource
tracker dies with it) leaves them, and the next Router on this host reclaims them. A
live process's regions are never touched. Regions are told apart by the PID in their
names (``-PID-``), since other Routers may run on this host meanwhile.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from repo_manager import Router
from repo_manager.phases import Phase
from repo_manager.server import EmbeddedTriton, ServerPorts
from repo_manager.shm import leaked_regions
from repo_manager.state import RolloutState, state_key
from repo_manager.storage import LocalStorage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                y = (x + 1).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
            return responses
    """
)

CONFIG = json.dumps(
    {
        "name": "m.versions",
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "version_policy": {"specific": {"versions": [1]}},
    }
)

#: A client process: a shm Router with traffic from 3 threads, then it obeys stdin:
#: ``infer`` (one request, prints its answer), ``exit`` (returns without ``close``).
CLIENT = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    import tritonclient.grpc as grpcclient
    from repo_manager import Router

    router = Router("m", sys.argv[1], sys.argv[2], shared_memory=True)
    traffic = sys.argv[3] == "traffic"

    def once(value):
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        return float(router.infer([tensor]).as_numpy("y")[0, 0])

    def loop():
        while True:
            once(2.0)

    threads = [threading.Thread(target=once, args=(1.0,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    once(1.0)  # the main thread's region too: stdin's requests reuse it
    if traffic:
        for _ in range(3):
            threading.Thread(target=loop, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "exit":
            break
        print(once(5.0), flush=True)
    """
)


@dataclass(kw_only=True)
class Served:
    url: str
    repository: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repository = tmp_path_factory.mktemp("model_repository")
    (repository / "m.versions" / "1").mkdir(parents=True)
    (repository / "m.versions" / "1" / "model.py").write_text(MODEL)
    state = RolloutState(
        model="m", phase=Phase.INITIALIZED, stable="1", canary=None, weights={"1": 100}
    )
    LocalStorage(repository).write_bytes_atomic(state_key("m"), state.to_json())
    log = repository.parent / "tritonserver.log"
    server = EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=log)
    server.start()
    try:
        server.wait_ready()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.load_model("m.versions", config=CONFIG)
        yield Served(url=server.grpc_url, repository=repository)
    finally:
        server.stop()


def registered(url: str) -> set[str]:
    """Every region name registered in Triton now."""
    with grpcclient.InferenceServerClient(url) as client:
        status = client.get_system_shared_memory_status(as_json=True)
    return {r["name"] for r in status.get("regions", {}).values()}


def regions_of(pid: int, url: str) -> tuple[set[str], set[str]]:
    """Process ``pid``'s regions: (files in /dev/shm, registrations in Triton)."""
    mark = f"-{pid}-"
    return (
        {n for n in leaked_regions() if mark in n},
        {n for n in registered(url) if mark in n and n.startswith("repo-manager-shm")},
    )


def x_input(value: float = 1.0) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return [tensor]


def infer_from_threads(router: Router, count: int = 4) -> None:
    threads = [threading.Thread(target=router.infer, args=(x_input(),)) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


def start_client(served: Served, mode: str = "idle") -> subprocess.Popen[str]:
    """A client process in its own process group, its Router's regions registered."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, served.url, str(served.repository), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise AssertionError(f"client did not start: {line!r} {process.communicate()[1]}")
    return process


def test_a_router_dropped_without_close_leaves_no_region_in_dev_shm_or_triton(
    served: Served,
) -> None:
    files_before, names_before = regions_of(os.getpid(), served.url)
    router = Router("m", served.url, served.repository, shared_memory=True)
    infer_from_threads(router)
    files, names = regions_of(os.getpid(), served.url)
    files, names = files - files_before, names - names_before
    assert files and names  # the Router made and registered regions of its own
    del router
    gc.collect()
    left_files, _ = regions_of(os.getpid(), served.url)
    assert files & left_files == set(), "left in /dev/shm"
    # Unregistered before close returned (Triton 2.51 refuses a region a request still
    # holds: the channel retried until it was free).
    assert names & regions_of(os.getpid(), served.url)[1] == set(), "left registered in Triton"


@pytest.mark.parametrize(
    ("ending", "mode"),
    [
        ("exit", "idle"),
        ("SIGTERM", "idle"),
        ("SIGINT", "idle"),
        ("exit", "traffic"),
        ("SIGTERM", "traffic"),
    ],
)
def test_a_client_process_that_ends_without_close_leaves_no_region(
    served: Served, ending: str, mode: str
) -> None:
    client = start_client(served, mode)
    files, names = regions_of(client.pid, served.url)
    assert files and names
    time.sleep(0.5)  # with traffic: requests in flight in 3 threads as it ends
    if ending == "exit":
        _, err = client.communicate("exit\n", timeout=30)
        assert client.returncode == 0, err
    else:
        client.send_signal(getattr(signal, ending))
        _, err = client.communicate(timeout=30)
        if ending == "SIGTERM":  # still dies of the signal, as its parent expects
            assert client.returncode == -signal.SIGTERM, err
    assert regions_of(client.pid, served.url)[0] == set()
    # Unregistered before the process ended, requests in flight or not.
    assert regions_of(client.pid, served.url) == (set(), set())


def test_regions_of_a_client_killed_mid_traffic_are_reclaimed_by_the_next_router(
    served: Served,
) -> None:
    client = start_client(served, "traffic")
    os.killpg(client.pid, signal.SIGKILL)  # the client and its resource tracker
    client.communicate(timeout=30)
    # What a killed client leaves: its registrations in Triton, and its files in /dev/shm
    # unless another process of this host reclaimed them first (every server start and
    # shared-memory Router sweeps dead owners' files: in the parallel suite, another
    # test's did, once, between the kill and this listing).
    assert regions_of(client.pid, served.url)[1]
    with Router("m", served.url, served.repository, shared_memory=True) as router:
        router.infer(x_input())
        assert regions_of(client.pid, served.url) == (set(), set())


def test_leftover_regions_lists_what_a_killed_client_left_and_nothing_of_a_live_one(
    served: Served,
) -> None:
    from repo_manager.shm import leftover_regions, reclaim_dead_regions

    def left_by(pid: int) -> set[str]:
        return {n for n in leftover_regions([served.url]) if f"-{pid}-" in n}

    live, killed = start_client(served), start_client(served)
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=30)
        files, names = regions_of(killed.pid, served.url)
        listed = left_by(killed.pid)
        # Its registrations exactly; its files as far as no other test's sweep (which
        # reclaims dead owners' files on this host) removed them after the first listing.
        assert names and {n for n in listed if not n.startswith("/dev/shm/")} == {
            f"{served.url}: {n}" for n in names
        }
        assert {n for n in listed if n.startswith("/dev/shm/")} <= {f"/dev/shm/{n}" for n in files}
        assert all(regions_of(live.pid, served.url)) and left_by(live.pid) == set()
        with grpcclient.InferenceServerClient(served.url) as triton:
            reclaim_dead_regions(triton)
        assert left_by(killed.pid) == set()
    finally:
        live.communicate("exit\n", timeout=30)


def test_a_sweep_never_touches_the_regions_of_a_live_client(served: Served) -> None:
    from repo_manager.shm import reclaim_dead_regions

    client = start_client(served)
    try:
        held = regions_of(client.pid, served.url)
        assert held[0] and held[1]
        with Router("m", served.url, served.repository, shared_memory=True) as router:
            router.infer(x_input())
            with grpcclient.InferenceServerClient(served.url) as triton:
                reclaim_dead_regions(triton)
        assert regions_of(client.pid, served.url) == held
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("infer\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "6.0"
        assert regions_of(client.pid, served.url) == held  # served through the same regions
    finally:
        client.communicate("exit\n", timeout=30)
