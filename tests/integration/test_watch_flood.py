"""The long-running manager survives its clients: 20,000 idle connections and 2,000
requests for models that do not exist against ``reconcile --watch --metrics-port`` on S3.
It stays up, Routers subscribed before keep getting every table within 1 s, its storage
requests do not grow, and its memory stays bounded (figures printed, for the note).

S3 is moto behind ``bench/s3_counting.py``: requests are counted at the server, by the
access key id that signed them (the manager has one of its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo_manager import Router
from repo_manager.phases import Phase
from repo_manager.server import free_port
from repo_manager.state import RolloutState, state_key
from tests.eventually import eventually
from tests.integration.conftest import CLI, S3_REGION, S3_SECRET, _wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "real"
MANAGER_KEY = "AKIAFLOODMANAGER0001"
ROUTER_KEY = "AKIAFLOODROUTERS0001"
IDLE_PER_PROCESS = 10_000  # two processes: 20,000 (a process's hard limit here is 20,000)


def counts(endpoint: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{endpoint}/__counts", timeout=10) as answer:
        found: dict[str, int] = json.loads(answer.read())
    return found


def manager_requests(endpoint: str) -> int:
    return sum(n for key, n in counts(endpoint).items() if key.startswith(MANAGER_KEY))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def counting_s3(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "s3.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "s3_counting.py"), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(f"{endpoint}/__counts", time.monotonic() + 60)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def write_table(storage: object, generation: int, weight: int) -> None:
    state = RolloutState(
        model=MODEL,
        phase=Phase.PROGRESSING,
        stable="1",
        canary="2",
        weights={"1": 100 - weight, "2": weight},
        generation=generation,
    )
    storage.write_bytes_atomic(state_key(MODEL), state.to_json())  # type: ignore[attr-defined]


def test_idle_connections_and_unknown_names_do_not_take_the_manager_down(
    counting_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from repo_manager.storage.s3 import S3Storage

    env = {"AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": S3_REGION}
    for name, value in {**env, "AWS_ACCESS_KEY_ID": ROUTER_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    boto3.client("s3", endpoint_url=counting_s3).create_bucket(Bucket="flood")
    storage = S3Storage("s3://flood/repo", endpoint_url=counting_s3)
    write_table(storage, 1, 10)

    port = free_port()
    log = tmp_path / "manager.log"
    command = [
        *CLI, "--repository", "s3://flood/repo", "--s3-endpoint", counting_s3,
        "--url", "127.0.0.1:1", "reconcile", "--watch", "--interval", "3600",
        "--metrics-port", str(port),
    ]  # fmt: skip
    with open(log, "wb") as output:
        manager = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "AWS_ACCESS_KEY_ID": MANAGER_KEY},
        )
    floods: list[subprocess.Popen[bytes]] = []
    routers: list[Router] = []
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 60)
        watch = f"http://127.0.0.1:{port}"
        routers = [
            Router(MODEL, url="127.0.0.1:1", repository="s3://flood/repo", watch_url=watch,
                   s3_endpoint=counting_s3, shared_memory=False)
            for _ in range(4)
        ]  # fmt: skip
        assert eventually(lambda: all(r.watching for r in routers), 30)
        rss_before, fds_before = rss_mb(manager.pid), descriptors(manager.pid)
        baseline_start, at = manager_requests(counting_s3), time.monotonic()
        time.sleep(5)  # a measured interval: the manager's storage requests at rest
        baseline = (manager_requests(counting_s3) - baseline_start) / (time.monotonic() - at)

        flood_start, at = manager_requests(counting_s3), time.monotonic()
        # 2,000 unknown names first (each reaches the name check), then 2 x 10,000 idle.
        for names, idle in ((2_000, 0), (0, IDLE_PER_PROCESS), (0, IDLE_PER_PROCESS)):
            command = [
                sys.executable, "-m", "tests.integration.flood", str(port),
                "--idle", str(idle), "--names", str(names), "--hold", "20",
            ]  # fmt: skip
            floods.append(subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT))
            if names:
                assert floods[-1].stdout is not None
                reports = [json.loads(floods[-1].stdout.readline())]
        reports += [json.loads(f.stdout.readline()) for f in floods[1:] if f.stdout]
        # While it is held: two weight changes, each pushed to every Router within 1 s.
        delays = []
        for generation, weight in ((2, 30), (3, 60)):
            write_table(storage, generation, weight)
            written = time.monotonic()
            assert all(r.wait_for_generation(generation, timeout=5) for r in routers)
            delays.append(time.monotonic() - written)
        rss_during, fds_during = rss_mb(manager.pid), descriptors(manager.pid)
        during = (manager_requests(counting_s3) - flood_start) / (time.monotonic() - at)
        assert manager.poll() is None, log.read_text()[-2000:]
        for flood in floods:
            flood.wait(timeout=120)
        assert eventually(lambda: descriptors(manager.pid) < fds_before + 50, 90)
        rss_after = rss_mb(manager.pid)
        print(
            f"\nflood: {reports}; push delays {[f'{d:.3f}' for d in delays]} s; manager "
            f"storage requests {baseline:.1f}/s at rest, {during:.1f}/s in the flood; RSS "
            f"{rss_before:.0f} -> {rss_during:.0f} -> {rss_after:.0f} MB; descriptors "
            f"{fds_before} -> {fds_during} -> {descriptors(manager.pid)}; log "
            f"{log.stat().st_size} bytes"
        )
        assert max(delays) < 1.0, delays
        assert reports[0]["answers"] == {"404": 2_000}, reports[0]
        assert during <= baseline * 1.5 + 1.0, (baseline, during)
        assert rss_during - rss_before < 200, (rss_before, rss_during)
        assert log.stat().st_size < 100_000  # one line per kind of error, not per client
        assert manager.poll() is None
    finally:
        for router in routers:
            router.close()
        for flood in floods:
            if flood.poll() is None:
                flood.kill()
        manager.send_signal(signal.SIGINT)
        manager.wait(timeout=60)
