"""Server-sent events or long-poll for the manager's watch endpoint, measured side by side.

The manager's ``WatchServer`` runs in a process of its own (``--serve``) over a local
folder, its storage poller off: each change is written and ``offer``ed there on a line
from this process (what the long-running manager does with a table it records), so what
differs between the two sides is the transport alone. ``--subscribers`` subscribers in
``--processes`` processes: SSE through the Router's own ``WatchSubscriber``, long-poll
through a keep-alive ``http.client`` loop (``GET /watch/M?after=G&wait=25``). Blocks of
``--changes`` changes alternate SSE, long-poll, SSE, long-poll (``--rounds``), each block
with only its own subscribers connected; per change: the offer -> the last subscriber
holding the table, and the serving process's CPU.

    python bench/watch_transport.py [--subscribers 200] [--processes 2] [--changes 20]
        [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

from bench.common import load_now, machine, median, pct  # noqa: E402
from bench.propagation_fleet import cpu_seconds  # noqa: E402

MODEL = "yolo"


def write_table(folder: str, generation: int) -> Any:
    from repo_manager.phases import Phase
    from repo_manager.state import RolloutState, state_key
    from repo_manager.storage import LocalStorage

    state = RolloutState(
        model=MODEL,
        phase=Phase.PROGRESSING,
        stable="1",
        canary="2",
        weights={"1": 100 - generation % 90, "2": generation % 90},
        generation=generation,
    )
    LocalStorage(folder).write_bytes_atomic(state_key(MODEL), state.to_json())
    return state.routing_table()


def serve(folder: str) -> None:
    """The manager's side: print the port, then write + offer one generation per line."""
    from prometheus_client import CollectorRegistry

    from repo_manager.storage import LocalStorage
    from repo_manager.watch import WatchServer

    server = WatchServer(LocalStorage(folder), CollectorRegistry(), poll_interval=3600)
    server.start(0, "127.0.0.1")
    print(server.port, flush=True)
    for line in sys.stdin:
        table = write_table(folder, int(line))
        offered = time.monotonic()
        server.offer(table)
        print(offered, flush=True)


def long_poll(port: int, reports: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    after = -1
    while True:
        connection.request("GET", f"/watch/{MODEL}?after={after}&wait=25")
        response = connection.getresponse()
        body = response.read()
        if response.status == 200:
            after = json.loads(body)["generation"]
            reports.put((after, time.monotonic()))


def subscribe(kind: str, count: int, port: int, reports: Any, stop: Any) -> None:
    """``count`` subscribers of one kind; reports (generation, monotonic) per table."""
    from repo_manager.routing.subscriber import WatchSubscriber

    subscribers = []
    for _ in range(count):
        if kind == "sse":
            subscriber = WatchSubscriber(
                f"http://127.0.0.1:{port}",
                MODEL,
                on_table=lambda t: reports.put((t.generation, time.monotonic())),
                on_state=lambda connected, reason: None,
                generation=lambda: -1,
            )
            subscriber.start()
            subscribers.append(subscriber)
        else:
            threading.Thread(target=long_poll, args=(port, reports), daemon=True).start()
    stop.wait()
    for subscriber in subscribers:
        subscriber.close()


def block(
    kind: str, args: Any, port: int, server: Any, generation: int
) -> tuple[list[float], float, int]:
    """One block of changes to subscribers of ``kind``: delays, CPU per change, generation."""
    context = mp.get_context("spawn")
    reports, stop = context.Queue(), context.Event()
    sizes = [args.subscribers // args.processes] * args.processes
    sizes[0] += args.subscribers - sum(sizes)
    workers = [
        context.Process(target=subscribe, args=(kind, n, port, reports, stop), daemon=True)
        for n in sizes
    ]
    for worker in workers:
        worker.start()
    for _ in range(args.subscribers):  # each holds the current table: all subscribed
        reports.get(timeout=120)
    time.sleep(0.5)
    delays = []
    cpu = cpu_seconds(server.pid)
    for _ in range(args.changes):
        time.sleep(0.1)
        generation += 1
        server.stdin.write(f"{generation}\n")
        server.stdin.flush()
        offered = float(server.stdout.readline())
        seen = []
        while len(seen) < args.subscribers:
            got, at = reports.get(timeout=60)
            if got == generation:
                seen.append(at)
        delays.append(max(seen) - offered)
    cpu_per_change = (cpu_seconds(server.pid) - cpu) / args.changes
    stop.set()
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
    return delays, cpu_per_change, generation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    if args.quick:
        args.subscribers, args.changes, args.rounds = 10, 3, 1
    print(machine())
    results: dict[str, tuple[list[float], list[float]]] = {"sse": ([], []), "long-poll": ([], [])}
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as folder:
        write_table(folder, 1)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            generation = 1
            for _ in range(args.rounds):
                for kind in ("sse", "long-poll"):
                    delays, cpu, generation = block(kind, args, port, server, generation)
                    results[kind][0].extend(delays)
                    results[kind][1].append(cpu)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(
        f"\n[10a] watch transport: {args.subscribers} subscribers in {args.processes} processes, "
        f"{args.rounds} x {args.changes} changes per side, blocks alternating; {load_now()}"
    )
    for kind, (delays, cpus) in results.items():
        print(
            f"  {kind:9s} offer -> last subscriber: p50 {median(delays) * 1e3:5.0f} ms, "
            f"p99 {pct(delays, 99) * 1e3:5.0f} ms; manager CPU per change "
            f"{median(cpus) * 1e3:5.1f} ms"
        )
    sse, lp = results["sse"], results["long-poll"]
    print(
        f"  long-poll / SSE: p99 {pct(lp[0], 99) / pct(sse[0], 99):.1f}x, "
        f"CPU per change {median(lp[1]) / max(median(sse[1]), 1e-9):.1f}x"
    )


if __name__ == "__main__":
    main()
