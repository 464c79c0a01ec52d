"""Fleet mode of ``bench/propagation.py``: N Routers on an S3 repository, with the manager's
watch endpoint and without it, side by side in one run.

S3 is moto behind ``bench/s3_counting.py``, which counts every request *at the server* by
the access key that signed it: the watchers, the manager and the one-shot CLI each sign
with their own. The watchers are real ``Router`` objects (``--processes`` spawned processes
of ``--watchers / --processes`` each; inference never runs, following the table is what is
measured); each reports every table it installs through the Router's own log line, stamped
with the system-wide monotonic clock. The manager is the real ``repo-manager reconcile
--watch --metrics-port`` process; ``set-weight`` runs in this process (as the CLI would).

Phases, with the watch: idle (S3 requests by idle watchers and by the manager), changes
(``set_weight`` returning -> the last watcher following), the manager killed (idle
fallback polling; one change followed through storage), the manager back (time until
every watcher resubscribed). Without the watch (today's 0.2 s polling): idle, changes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT, load_now, median, pct, table_only_manager

MODEL = "yolo"
WATCHERS, MANAGER, CLI = "AKIAWATCHERS", "AKIAMANAGER", "AKIACLI"
BUCKET = "fleet"


def _environment(key: str, endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def follow(
    count: int, endpoint: str, watch_url: str, ready: Any, reports: Any, watching: Any, stop: Any
) -> None:
    """One process of ``count`` Routers; reports (generation, monotonic time) per install."""
    import logging

    os.environ.update(_environment(WATCHERS, endpoint))
    from repo_manager import Router
    from repo_manager.metrics import RouterMetrics

    class Installs(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "routing generation" in str(record.msg):
                reports.put((int(record.args[1]), time.monotonic()))  # type: ignore[index]

    table_log = logging.getLogger("repo_manager.routing.table")
    table_log.setLevel(logging.INFO)
    table_log.addHandler(Installs())
    table_log.propagate = False
    metrics = RouterMetrics()
    routers = [
        Router(
            MODEL,
            "127.0.0.1:1",
            f"s3://{BUCKET}/repo",
            shared_memory=False,
            watch_url=watch_url,
            metrics=metrics,
        )
        for _ in range(count)
    ]
    ready.put(len(routers))
    while not stop.wait(0.05):
        watching.value = metrics.table_source(MODEL).snapshot()[0]["watch"]
    for router in routers:
        router.close()


@dataclass(kw_only=True)
class Fleet:
    endpoint: str
    watchers: int
    processes: int
    reports: Any
    watching: list[Any]
    stop: Any
    workers: list[Any]

    def following_watch(self) -> int:
        return sum(w.value for w in self.watching)

    def wait_for(self, generation: int, returned: float, timeout: float) -> float:
        """Seconds from ``returned`` to the last watcher installing ``generation``."""
        seen: list[float] = []
        deadline = time.monotonic() + timeout
        while len(seen) < self.watchers:
            got, at = self.reports.get(timeout=max(0.1, deadline - time.monotonic()))
            if got == generation:
                seen.append(at)
        return max(seen) - returned


@contextmanager
def fleet(endpoint: str, watchers: int, processes: int, watch_url: str) -> Any:
    context = mp.get_context("spawn")
    ready, reports, stop = context.Queue(), context.Queue(), context.Event()
    watching = [context.Value("i", 0) for _ in range(processes)]
    sizes = [watchers // processes + (i < watchers % processes) for i in range(processes)]
    workers = [
        context.Process(
            target=follow,
            args=(size, endpoint, watch_url, ready, reports, watching[i], stop),
            daemon=True,
        )
        for i, size in enumerate(sizes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=300)
    running = Fleet(
        endpoint=endpoint,
        watchers=watchers,
        processes=processes,
        reports=reports,
        watching=watching,
        stop=stop,
        workers=workers,
    )
    try:
        yield running
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()


def counts(endpoint: str) -> dict[str, int]:
    """Requests served so far per signer, and per "signer METHOD", counted by the S3 server."""
    with urllib.request.urlopen(f"{endpoint}/__counts", timeout=10) as response:
        by_method: dict[str, int] = json.loads(response.read())
    total = dict(by_method)
    for key, n in by_method.items():
        signer = key.split(" ")[0]
        total[signer] = total.get(signer, 0) + n
    return total


def idle_window(endpoint: str, seconds: float, pid: int | None = None) -> dict[str, float]:
    """Requests per signer over ``seconds`` of nothing happening (and the manager's CPU)."""
    before, cpu_before = counts(endpoint), cpu_seconds(pid)
    time.sleep(seconds)
    after, cpu_after = counts(endpoint), cpu_seconds(pid)
    found = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {**found, "seconds": seconds, "cpu": cpu_after - cpu_before}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_manager(endpoint: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "repo_manager.cli",
        "--repository",
        f"s3://{BUCKET}/repo",
        "--s3-endpoint",
        endpoint,
        "--url",
        "127.0.0.1:1",
        "reconcile",
        "--watch",
        "--interval",
        "3600",
        "--metrics-port",
        str(port),
    ]
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **_environment(MANAGER, endpoint)},
            cwd=ROOT,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).close()
            return process
        except OSError as exc:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the manager did not start: {log.read_text()[-2000:]}") from exc
            time.sleep(0.1)


def changes(running: Fleet, manager: Any, count: int, rng: random.Random) -> list[float]:
    """``count`` set-weight calls; per call, its return -> the last watcher following."""
    delays = []
    for i in range(count):
        time.sleep(rng.uniform(0.05, 0.35))  # anywhere in a 0.2 s poll cycle
        new = manager.set_weight(MODEL, 10 + (i % 2) * 40)
        delays.append(running.wait_for(new.generation, time.monotonic(), timeout=120))
    return delays


def per_watcher_hour(window: dict[str, float], watchers: int) -> float:
    return window.get(WATCHERS, 0) / watchers / window["seconds"] * 3600


def run(args: Any, endpoint: str, tmp: Path) -> dict[str, Any]:
    """Every phase; returns the figures (printed by ``report``)."""
    from repo_manager.phases import Phase
    from repo_manager.server import free_port
    from repo_manager.state import RolloutState, state_key
    from repo_manager.storage.s3 import S3Storage

    os.environ.update(_environment(CLI, endpoint))
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    storage = S3Storage(f"s3://{BUCKET}/repo", endpoint_url=endpoint)
    storage.prepare()
    state = RolloutState(
        model=MODEL, phase=Phase.PROGRESSING, stable="1", canary="2", weights={"1": 90, "2": 10}
    )
    storage.write_bytes_atomic(state_key(MODEL), state.to_json())
    manager = table_only_manager(storage, MODEL)
    rng = random.Random(0)
    figures: dict[str, Any] = {}
    port = free_port()
    process = start_manager(endpoint, port, tmp / "manager.log")
    try:
        url = f"http://127.0.0.1:{port}"
        with fleet(endpoint, args.watchers, args.processes, url) as running:
            deadline = time.monotonic() + 120
            while running.following_watch() < args.watchers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {running.following_watch()} watchers subscribed")
                time.sleep(0.1)
            figures["watch_idle"] = idle_window(endpoint, args.idle, process.pid)
            cpu = cpu_seconds(process.pid)
            figures["watch_delays"] = changes(running, manager, args.changes, rng)
            figures["watch_cpu_per_change"] = (cpu_seconds(process.pid) - cpu) / args.changes
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            while running.following_watch() > 0:
                time.sleep(0.1)
            figures["fallback_idle"] = idle_window(endpoint, args.fallback_idle)
            new = manager.set_weight(MODEL, 70)
            figures["fallback_delay"] = running.wait_for(new.generation, time.monotonic(), 300)
            restarted = time.monotonic()
            process = start_manager(endpoint, port, tmp / "manager.log")
            while running.following_watch() < args.watchers:
                if time.monotonic() - restarted > 120:
                    raise RuntimeError("the watchers did not resubscribe within 120 s")
                time.sleep(0.05)
            figures["resubscribed"] = time.monotonic() - restarted
    finally:
        process.terminate()
        process.wait(timeout=30)
    with fleet(endpoint, args.watchers, args.processes, "") as running:
        time.sleep(2)  # every poller started
        figures["poll_idle"] = idle_window(endpoint, args.poll_idle)
        figures["poll_delays"] = changes(running, manager, args.poll_changes, rng)
    manager.fleet.close()
    return figures


def report(figures: dict[str, Any], args: Any) -> None:
    n = args.watchers
    watch, poll = figures["watch_delays"], figures["poll_delays"]
    idle, fallback, polled = figures["watch_idle"], figures["fallback_idle"], figures["poll_idle"]
    watch_hourly = per_watcher_hour(idle, n)
    fallback_hourly = per_watcher_hour(fallback, n)
    poll_hourly = per_watcher_hour(polled, n)
    manager_rate = idle.get(MANAGER, 0) / idle["seconds"]
    cpu_per_push = figures["watch_cpu_per_change"] / n
    print(
        f"\n[10] fleet propagation: {n} Router watchers in {args.processes} processes, one S3 "
        f"repository (moto, requests counted at the server); {load_now()}"
    )
    print("  set-weight return -> last watcher following:")
    for name, delays in (("watch", watch), ("no watch (0.2 s polling)", poll)):
        name = f"{name}, {len(delays)} changes"
        print(
            f"    {name:37s} p50 {median(delays) * 1e3:6.0f} ms  p99 {pct(delays, 99) * 1e3:6.0f} "
            f"ms  max {max(delays) * 1e3:6.0f} ms  (goal p99 <= 1 s: "
            f"{'met' if pct(delays, 99) <= 1.0 else 'NOT met'})"
        )
    print(f"    p99 ratio no-watch / watch: {pct(poll, 99) / pct(watch, 99):.1f}x")
    print("  S3 requests by idle watchers, per watcher-hour (goal <= 120):")
    for name, hourly, window in (
        ("watch, manager up", watch_hourly, idle),
        ("watch, manager killed", fallback_hourly, fallback),
        ("no watch", poll_hourly, polled),
    ):
        print(
            f"    {name:24s} {hourly:8.1f}   ({window.get(WATCHERS, 0)} requests in "
            f"{window['seconds']:.0f} s: {window.get(WATCHERS + ' HEAD', 0)} HEAD, "
            f"{window.get(WATCHERS + ' GET', 0)} GET)"
        )
    print(
        "    (killed: each watcher's first check after the outage began also re-reads the "
        "table, one GET, since the watch brought the last tables)"
    )
    print(
        f"  manager: {manager_rate:.2f} S3 requests/s while idle (one change-token poll per "
        f"watched model), {idle['cpu'] / idle['seconds'] * 1e3:.1f} ms CPU per s idle, "
        f"{figures['watch_cpu_per_change'] * 1e3:.1f} ms CPU per change pushed to {n}"
    )
    print(
        f"  manager killed: a change reached the last watcher through storage in "
        f"{figures['fallback_delay']:.1f} s; manager restarted -> all {n} resubscribed in "
        f"{figures['resubscribed']:.1f} s (process start included)"
    )
    routers = 10_000
    print(f"  on paper, {routers:,} Routers (one model):")
    print(
        f"    no watch: {routers * 5:,} S3 HEAD/s (5 per Router per s; the {n} pollers here, "
        f"CPU-bound on 2 cores, managed {poll_hourly / 3600:.2f}/s each)"
    )
    print(
        f"    watch, manager up: {routers * watch_hourly / 3600 + manager_rate:,.1f} S3 "
        f"requests/s (the manager's {manager_rate:.1f}); to the manager: 0 requests/s idle "
        f"({routers:,} open streams, {routers / 10:,.0f} keep-alive lines/s), {routers:,} "
        f"pushes per change, about {cpu_per_push * routers:.1f} s of the manager's CPU each "
        f"({cpu_per_push * 1e6:.0f} us per subscriber, as measured here)"
    )
    print(
        f"    watch, manager down: {routers * fallback_hourly / 3600:,.0f} S3 requests/s; "
        f"reconnect attempts to the manager's address about "
        f"{routers / 7.5:,.0f}/s (retries at most 10 s apart, jittered to 5-10 s)"
    )


def main(args: Any) -> None:
    import tempfile

    from repo_manager.server import free_port

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as name:
        tmp = Path(name)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "s3_counting.py"), str(port)],
            stdout=subprocess.PIPE,
            stderr=open(tmp / "s3.log", "wb"),  # noqa: SIM115 - closed with the folder
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"up"
            report(run(args, f"http://127.0.0.1:{port}", tmp), args)
        finally:
            server.terminate()
            server.wait(timeout=30)
