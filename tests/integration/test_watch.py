"""Routers following the long-running manager's watch endpoint, with everything real: an S3
repository (moto's server), a tritonserver reading it, the manager as its own process
(``reconcile --watch --metrics-port``) and each change made by another manager process
(``repo-manager set-weight``, the one-shot CLI).

The manager killed: Routers fall back to storage and still follow a change; the manager
back: they resubscribe; at no moment does a Router hold an older table than before, and
inference through them never fails or waits meanwhile.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from repo_manager import Router
from repo_manager.server import free_port
from tests.eventually import eventually
from tests.integration.conftest import S3Fleet, _wait_for_http
from tests.integration.test_rollout import traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "yolov8n"


def start_manager(fleet: S3Fleet, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``reconcile --watch`` serving its metrics and the watch on ``port``."""
    command = fleet.command(
        "reconcile", "--watch", "--interval", "3600", "--metrics-port", str(port)
    )
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    _wait_for_http(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 60)
    return process


@contextmanager
def generations_never_go_back(routers: list[Router]) -> Iterator[list[str]]:
    """Sample every Router's generation every 2 ms; yields the violations seen."""
    violations: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        last = [-1] * len(routers)
        while not stop.wait(0.002):
            for i, router in enumerate(routers):
                table = router.table
                generation = -1 if table is None else table.generation
                if generation < last[i]:
                    violations.append(f"router {i}: {last[i]} -> {generation}")
                last[i] = generation

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    try:
        yield violations
    finally:
        stop.set()
        sampler.join(timeout=5)


def set_weight(fleet: S3Fleet, weight: int, routers: list[Router]) -> tuple[int, float]:
    """``set-weight`` from another process; returns the new generation and the seconds
    from its return to the last Router following it."""
    before = max(r.table.generation for r in routers if r.table is not None)
    fleet.cli("set-weight", MODEL, str(weight))
    returned = time.monotonic()
    generation = before + 1
    assert all(r.wait_for_generation(generation, timeout=10) for r in routers)
    return generation, time.monotonic() - returned


def test_routers_follow_the_watch_fall_back_while_the_manager_is_down_and_resubscribe(
    fleet1: S3Fleet, weights: Path, tmp_path: Path
) -> None:
    fleet1.publish(MODEL, "1", weights)
    fleet1.publish(MODEL, "2", weights, "--canary-weight", "10")
    port = free_port()
    log = tmp_path / "manager.log"
    manager = start_manager(fleet1, port, log)
    routers = [
        Router(
            MODEL,
            fleet1.urls,
            fleet1.repository,
            s3_endpoint=fleet1.endpoint,
            watch_url=f"http://127.0.0.1:{port}",
            fallback_interval=1.0,
            timeout=30,
        )
        for _ in range(3)
    ]
    try:
        with generations_never_go_back(routers) as violations, traffic(routers[0]) as record:
            assert eventually(lambda: all(r.watching for r in routers), 10)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert f'repo_manager_watch_subscribers{{model="{MODEL}"}} 3.0' in text
            assert "repo_manager_reconcile_runs_total" in text  # one port for both
            # Followed through the watch: the manager read the change from S3 and pushed it.
            _, through_watch = set_weight(fleet1, 40, routers)
            assert through_watch < 1.0
            assert all(
                r.table is not None and r.table.weights == {"1": 60, "2": 40} for r in routers
            )

            manager.send_signal(signal.SIGKILL)
            manager.wait(timeout=10)
            assert eventually(lambda: not any(r.watching for r in routers), 5)
            # Another manager writes while this one is down: storage is still polled.
            _, through_storage = set_weight(fleet1, 60, routers)
            assert through_storage < 1.0 * 1.25 + 1.0  # one jittered fallback interval

            killed_at = time.monotonic()
            manager = start_manager(fleet1, port, log)
            assert eventually(lambda: all(r.watching for r in routers), 20), "no resubscribe"
            resubscribed = time.monotonic() - killed_at
            _, back = set_weight(fleet1, 70, routers)
            assert back < 1.0
            time.sleep(0.5)
        assert violations == []
        assert record.failures == []
        assert sum(record.versions_since(0).values()) > 0
        for router in routers:
            assert router.table is not None and router.table.weights == {"1": 30, "2": 70}
            source = router.metrics.table_source(MODEL).snapshot()
            assert source[0]["watch"] >= 1
        print(
            f"watch {through_watch * 1e3:.0f} ms, storage {through_storage * 1e3:.0f} ms, "
            f"resubscribed in {resubscribed:.1f} s, back {back * 1e3:.0f} ms"
        )
    finally:
        for router in routers:
            router.close()
        manager.terminate()
        try:
            manager.wait(timeout=15)
        except subprocess.TimeoutExpired:
            manager.kill()
    # A clean stop: SIGTERM ends the manager (and its streams) without a traceback.
    assert manager.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
