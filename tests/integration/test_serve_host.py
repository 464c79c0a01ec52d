"""``serve --host`` reports, waits on and reconciles through the address it binds.

127.0.0.2 stands in for a machine's own concrete address (Linux routes all of 127/8 to
lo): the server listens there and not on 127.0.0.1, so a URL that still named 127.0.0.1
would never answer.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from repo_manager.errors import TritonUnavailableError
from repo_manager.server import ServerPorts
from repo_manager.triton import TritonControl
from tests.integration.conftest import CLI

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if text in line:
                return line
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {timeout:.0f}s: {log.read_text()}")


def test_serve_on_a_concrete_host_reports_and_waits_on_that_host(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    ports = ServerPorts.free()
    log = tmp_path / "serve.err"
    command = [
        *CLI, "--repository", str(repository), "serve", "--host", "127.0.0.2",
        "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics), "--log-file", str(tmp_path / "triton.log"),
    ]  # fmt: skip
    with open(log, "wb") as err:
        process = subprocess.Popen(command, stderr=err, stdout=subprocess.DEVNULL)
    try:
        ready = _wait_for_line(log, process, "tritonserver ready", timeout=120)
        assert ready == (
            f"tritonserver ready: grpc 127.0.0.2:{ports.grpc}, http 127.0.0.2:{ports.http}, "
            f"metrics http://127.0.0.2:{ports.metrics}/metrics"
        )
        TritonControl(f"127.0.0.2:{ports.grpc}").check_reachable()
        with pytest.raises(TritonUnavailableError):  # it listens on 127.0.0.2 only
            TritonControl(f"127.0.0.1:{ports.grpc}", request_timeout=3).check_reachable()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()
