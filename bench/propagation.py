"""How fast a weight change reaches live Routers in other processes.

Starts ``--routers`` processes, each holding one ``Router`` over the same repository (no
Triton needed: following the routing table is what is measured). The main process then
calls ``RolloutManager.set_weight`` (what ``repo-manager set-weight`` runs) ``--changes``
times, at random moments relative to the Routers' poll phase, and records for each change
the time from ``set_weight`` returning to the moment the *last* Router has the new table
in force (each Router process reports ``wait_for_generation`` returning, stamped with the
system-wide monotonic clock). Goal: p99 <= 1 s.

``--fleet``: N Routers on an S3 repository with the manager's watch endpoint and without
it, storage requests counted at the S3 server (``bench/propagation_fleet.py``).

    python bench/propagation.py [--routers 8] [--changes 60] [--quick]
    python bench/propagation.py --fleet [--watchers 200] [--processes 4] [--changes 30]
        [--idle 60] [--fallback-idle 120] [--poll-idle 30] [--poll-changes 10] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

from bench.common import load_now, machine, median, met, pct, table_only_manager  # noqa: E402

MODEL = "yolo"


def follow(repository: str, ready: Any, reports: Any, changes: int) -> None:
    """One Router process: report (generation, monotonic time) of every table it installs."""
    from repo_manager import Router

    with Router(MODEL, "127.0.0.1:1", repository, shared_memory=False) as router:
        table = router.table
        generation = table.generation if table else 0
        ready.put(generation)
        for _ in range(changes):
            if not router.wait_for_generation(generation + 1, timeout=30):
                return
            now = time.monotonic()
            table = router.table
            assert table is not None
            generation = table.generation
            reports.put((generation, now))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", type=int, default=8)
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="a few changes: a smoke run")
    fleet = parser.add_argument_group("fleet mode (S3, with and without the watch)")
    fleet.add_argument("--fleet", action="store_true")
    fleet.add_argument("--watchers", type=int, default=200)
    fleet.add_argument("--processes", type=int, default=4)
    fleet.add_argument("--idle", type=float, default=60, help="seconds idle, watch up")
    fleet.add_argument("--fallback-idle", type=float, default=120, help="... manager killed")
    fleet.add_argument("--poll-idle", type=float, default=30, help="... without the watch")
    fleet.add_argument("--poll-changes", type=int, default=10, help="changes without it")
    args = parser.parse_args(argv)
    print(machine())
    if args.fleet:
        from bench import propagation_fleet

        if args.quick:
            args.watchers, args.processes, args.changes, args.poll_changes = 6, 2, 3, 3
            args.idle, args.fallback_idle, args.poll_idle = 3, 5, 3
        elif args.changes == 60:
            args.changes = 30
        propagation_fleet.main(args)
        return
    if args.quick:
        args.routers, args.changes = 3, 5

    from repo_manager.phases import Phase
    from repo_manager.state import RolloutState, state_key
    from repo_manager.storage import LocalStorage

    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        storage = LocalStorage(Path(tmp))
        state = RolloutState(
            model=MODEL,
            phase=Phase.PROGRESSING,
            stable="1",
            canary="2",
            weights={"1": 90, "2": 10},
            generation=1,
        )
        storage.write_bytes_atomic(state_key(MODEL), state.to_json())
        manager = table_only_manager(storage, MODEL)
        ready, reports = context.Queue(), context.Queue()
        workers = [
            context.Process(target=follow, args=(tmp, ready, reports, args.changes), daemon=True)
            for _ in range(args.routers)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=120)
        delays: list[float] = []
        rng = random.Random(0)
        for i in range(args.changes):
            time.sleep(rng.uniform(0.05, 0.35))  # land anywhere in the 0.2 s poll cycle
            new = manager.set_weight(MODEL, 10 + (i % 2) * 40)
            returned = time.monotonic()
            seen = []
            while len(seen) < args.routers:
                generation, at = reports.get(timeout=30)
                if generation == new.generation:
                    seen.append(at)
            delays.append(max(seen) - returned)
        for worker in workers:
            worker.join(timeout=30)
        manager.fleet.close()

    p50, p99 = median(delays), pct(delays, 99)
    print(
        f"\n[5] propagation: {args.changes} set-weight changes, {args.routers} Router processes "
        f"(poll interval 0.2 s); {load_now()}"
    )
    print(
        f"  set-weight return -> last Router following: p50 {p50 * 1e3:.0f} ms, "
        f"p99 {p99 * 1e3:.0f} ms, max {max(delays) * 1e3:.0f} ms "
        f"(goal p99 <= 1 s: {met(p99, 1.0)})"
    )


if __name__ == "__main__":
    main()
