"""A hung server (SIGSTOP: it takes connections and answers nothing) in a fleet of two
embedded tritonservers on one repository, under 4 ``Router.detect`` threads: no request
takes longer than the deadline + 1 s, none fails, the server is back in rotation within a
few seconds of SIGCONT, and ``status`` names it and how to leave it out."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from repo_manager import Router
from repo_manager.server import EmbeddedTriton, ServerPorts
from tests.eventually import eventually
from tests.integration.conftest import CLI, Stack, publish_args, run_cli
from tests.integration.traffic import PAUSE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "hung"
DEADLINE = 5.0  # the Router's per-request deadline in this test
STOPPED = 20.0


def served_on(url: str) -> int:
    """Successful inferences of the versions model on one server (Triton's statistics)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(f"{MODEL}.versions", as_json=True)
    finally:
        client.close()
    return sum(int(m["inference_stats"]["success"].get("count", 0)) for m in stats["model_stats"])


def test_a_stopped_server_leaves_the_rotation_and_comes_back(
    stack: Stack, weights: Path, tmp_path: Path
) -> None:
    second = EmbeddedTriton(
        stack.repository, ports=ServerPorts.free(), log_path=tmp_path / "second.log"
    )
    second.start()
    try:
        second.wait_ready()
        urls = [stack.url, second.grpc_url]
        fleet = [*CLI, "--repository", str(stack.repository)]
        fleet += [part for url in urls for part in ("--url", url)]
        args = tuple(publish_args(MODEL, "1", weights))
        run_cli([*fleet, *args], args, check=True, timeout=300)
        image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        latencies: list[tuple[float, float]] = []
        failures: list[str] = []
        stop = threading.Event()
        with Router(MODEL, url=urls, repository=stack.repository, timeout=DEADLINE) as router:

            def client() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        router.detect(image)
                    except Exception as exc:  # recorded: the assertion is that none happen
                        failures.append(repr(exc))
                    latencies.append((started, time.monotonic() - started))
                    stop.wait(PAUSE)

            threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            assert eventually(lambda: len(latencies) > 20, 60)
            assert pid_of(second) is not None
            os.kill(pid_of(second), signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                args = ("status", MODEL, "--json")
                status = run_cli([*fleet, *args], args, check=False, timeout=120)
                assert eventually(lambda: time.monotonic() - stopped >= STOPPED, STOPPED + 5)
            finally:
                os.kill(pid_of(second), signal.SIGCONT)
            resumed = time.monotonic()
            assert router.hung_servers == [second.grpc_url]  # out while it was stopped
            assert eventually(lambda: router.hung_servers == [], 10)
            back = time.monotonic() - resumed
            # Back in the round robin: new requests reach it (not only those it held).
            before = served_on(second.grpc_url)
            assert eventually(lambda: served_on(second.grpc_url) >= before + 5, 10)
            stop.set()
            for thread in threads:
                thread.join(timeout=DEADLINE + 5)
        during = [d for t, d in latencies if stopped <= t <= resumed]
        slowest = max(d for _, d in latencies)
        print(
            f"\nhung server: {len(latencies)} requests, {len(during)} during the "
            f"{STOPPED:.0f} s stop, slowest {slowest:.2f} s (deadline {DEADLINE:g} s), "
            f"back in rotation {back:.2f} s after SIGCONT"
        )
        assert failures == []
        assert slowest <= DEADLINE + 1.0
        assert len(during) > 50  # the other server took the traffic meanwhile
        assert back < 5.0
        document = json.loads(status.stdout)
        said = {s["url"]: s["error"] for s in document["servers"]}
        assert said[stack.url] is None
        assert "did not answer" in said[second.grpc_url]
        assert "leave it out with --url" in said[second.grpc_url]
    finally:
        second.stop()


def pid_of(server: EmbeddedTriton) -> int:
    assert server.pid is not None
    return server.pid
