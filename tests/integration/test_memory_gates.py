"""The memory gates read real servers: ``serve --process-metrics-port`` reports the resident
memory of tritonserver and its backend stubs, Triton reports the host's memory, and a
canary whose server stays above the memory bound is rolled back by the analysis, with or
without traffic (real embedded tritonserver started by ``serve``)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from repo_manager.server import ServerPorts, free_port
from tests.integration.conftest import CLI, publish_args, run_cli
from tests.integration.test_serve_host import _wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "memory"


def test_a_canary_whose_server_stays_above_the_memory_bound_is_rolled_back(
    tmp_path: Path, trained_detector: Path
) -> None:
    repository = tmp_path / "model_repository"
    ports, process_port = ServerPorts.free(), free_port()
    url = f"127.0.0.1:{ports.grpc}"
    log = tmp_path / "serve.err"
    serve = [
        *CLI, "--repository", str(repository), "serve",
        "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics), "--process-metrics-port", str(process_port),
        "--reconcile-interval", "60s",
    ]  # fmt: skip
    with open(log, "wb") as err:
        process = subprocess.Popen(serve, stderr=err, stdout=subprocess.DEVNULL)
    try:
        _wait_for_line(log, process, "tritonserver ready", timeout=120)
        cli = [*CLI, "--repository", str(repository), "--url", url]

        def run(*args: str, check: bool = True) -> str:
            result = run_cli([*cli, *args], args, check=check, timeout=300)
            return result.stdout + result.stderr

        run(*publish_args(MODEL, "1", trained_detector))
        run(*publish_args(MODEL, "2", trained_detector), "--canary-weight", "10")
        exposition = (
            urllib.request.urlopen(f"http://127.0.0.1:{process_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        [line] = [x for x in exposition.splitlines() if x.startswith("repo_manager_server")]
        # tritonserver and the stubs of two loaded versions and the public name.
        assert line.startswith(f'repo_manager_server_resident_bytes{{server="{url}"}}')
        assert float(line.split()[-1]) > 150e6, line
        # No traffic at all: the servers' memory is judged all the same. The host's share
        # in use (a few percent here) stays above a bound of 1% for the 2 s window.
        said = run(
            "rollout", MODEL,
            "--steps", "10,100", "--interval", "1s", "--threshold", "2",
            "--live-gate", "max_memory_share=0.01", "--live-gate", "memory_window_s=2",
            "--metrics-url", f"http://127.0.0.1:{ports.metrics}/metrics",
            "--metrics-url", f"http://127.0.0.1:{process_port}/metrics",
            check=False,
        )  # fmt: skip
        assert "canary rolled back by the analysis" in said, said
        assert "max_memory_share[server]" in said, said
        state = json.loads((repository / f".repo-manager.{MODEL}.json").read_text())
        assert state["phase"] == "rolled_back" and state["weights"] == {"1": 100}
        failed = next(
            t["details"]["analysis"]
            for t in reversed(state["history"])
            if (t.get("details") or {}).get("analysis", {}).get("outcome") == "fail"
        )
        gates = {g["name"]: g for g in failed["gates"]}
        host = f"127.0.0.1:{ports.metrics} host"
        assert gates["max_memory_share[server]"]["detail"].startswith(f"{host}: at least")
        # The resident memory's growth since the first reading is judged (and holds).
        assert gates["max_resident_growth[server]"]["passed"]
        assert gates["max_resident_growth[server]"]["value"] is not None
        assert failed["servers"][url]["resident_mib"] > 150
        assert 0.01 < failed["servers"][host]["memory_share"] < 1
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
