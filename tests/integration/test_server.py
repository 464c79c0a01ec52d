"""The embedded tritonserver wrapper, against the real binary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from repo_manager.errors import TritonUnavailableError
from repo_manager.server import EmbeddedTriton, ServerPorts
from repo_manager.shm_owners import Owner
from repo_manager.triton import TritonControl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_start_ready_stop(tmp_path: Path) -> None:
    server = EmbeddedTriton(tmp_path, ports=ServerPorts.free(), log_path=tmp_path / "log")
    server.start()
    server.wait_ready(timeout=60)
    assert server.is_alive()
    TritonControl(server.grpc_url).check_reachable()
    server.stop()
    assert not server.is_alive()


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = EmbeddedTriton(
        tmp_path,
        ports=ServerPorts.free(),
        log_path=tmp_path / "broken.log",
        extra_args=("--no-such-option=1",),
    )
    broken.start()
    with pytest.raises(TritonUnavailableError, match=r"exited with code .*broken\.log"):
        broken.wait_ready(timeout=30)
    assert "no-such-option" in (tmp_path / "broken.log").read_text()


def test_the_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from repo_manager.server import EmbeddedTriton, ServerPorts\n"
        f"s = EmbeddedTriton({str(tmp_path)!r}, ports=ServerPorts.free())\n"
        "s.start(); s.wait_ready(); print(s.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
"""
IDENTITY_CONFIG = """
name: "identity"
backend: "python"
max_batch_size: 0
input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


def _shm() -> set[str]:
    """This process's regions in /dev/shm: the servers it launched tag theirs with it (the
    servers of tests running beside this one, in other processes, make and free theirs)."""
    owner = Owner.current()
    assert owner is not None
    return {name for name in os.listdir("/dev/shm") if name.startswith(owner.tag() + "-")}


@pytest.mark.parametrize("end", ["kill", "stop"])
def test_a_killed_or_stopped_server_leaves_no_python_backend_region_in_dev_shm(
    tmp_path: Path, end: str
) -> None:
    (tmp_path / "identity" / "1").mkdir(parents=True)
    (tmp_path / "identity" / "1" / "model.py").write_text(IDENTITY_MODEL)
    (tmp_path / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    before = _shm()
    server = EmbeddedTriton(tmp_path, ports=ServerPorts.free(), log_path=tmp_path / "log")
    server.start()
    server.wait_ready(timeout=60)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.load_model("identity")
    made = _shm() - before
    assert made, "the python backend made no region: nothing to prove"
    getattr(server, end)()  # a SIGKILL unlinks nothing itself
    assert _shm() & made == set()
