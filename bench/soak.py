"""A seeded, time-bounded fault-injection soak on this machine (loopback only).

A fleet of ``--servers`` (2) embedded tritonservers reads one S3 repository (moto, in a
child process that can be restarted with its data); 4 Router threads and 2 unpinned client
threads run throughout; each round publishes a canary, sets its weight and promotes or
rolls it back through real ``repo-manager`` processes, with one fault drawn by the seed
(``bench/soak_faults.py``; every kind once per cycle of seven rounds, in seeded order).
After each round ``reconcile`` runs, then the invariants of ``bench/soak_checks.py``.

Prints rounds, faults by kind, requests sent and failed, invariant violations; exits 1 on
any failed Router request, any failed unpinned request to a server that stayed up, or any
violation.

    python bench/soak.py --rounds 30 --seed 1 [--max-seconds 3600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

from bench.common import detector_weights, load_now, machine  # noqa: E402
from bench.soak_checks import (  # noqa: E402
    ProcessWatch,
    check_phase,
    check_repository,
    check_secrets,
    check_servers,
    read_state,
)
from bench.soak_faults import KINDS, Round  # noqa: E402
from bench.soak_traffic import (  # noqa: E402
    PAUSE,
    Downtime,
    RouterTraffic,
    UnpinnedTraffic,
    shapes_images,
)
from bench.soak_world import IMGSZ, MODEL, World, export_template  # noqa: E402


def fault_plan(rng: random.Random, rounds: int, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """Every kind once per cycle of len(kinds) rounds, each cycle in a seeded order."""
    plan: list[str] = []
    while len(plan) < rounds:
        cycle = list(kinds)
        rng.shuffle(cycle)
        plan += cycle
    return plan[:rounds]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="start no round after this"
    )
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--router-threads", type=int, default=4)
    parser.add_argument("--unpinned-threads", type=int, default=2)
    parser.add_argument(
        "--pause", type=float, default=PAUSE, help="seconds between a client thread's requests"
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: tuple(k.strip() for k in text.split(",") if k.strip()),
        default=KINDS,
        help=f"comma-separated fault kinds drawn from (default: all: {','.join(KINDS)})",
    )
    parser.add_argument("--weights", type=Path, default=None, help="detector .pt")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this folder")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown or not args.kinds:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    started = time.monotonic()
    print(machine())
    print(f"soak: seed {args.seed}, {args.rounds} rounds, at most {args.max_seconds:.0f} s")
    template = export_template(detector_weights(args.weights), _ROOT / ".cache" / "soak")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return soak(args, args.keep, template, started)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return soak(args, Path(tmp), template, started)


def soak(args: argparse.Namespace, root: Path, template: Path, started: float) -> int:
    from repo_manager import Router

    # The clients' warnings (an unreachable server, a failed table poll) go to a log.
    handler = logging.FileHandler(root / "clients.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    rng = random.Random(args.seed)
    plan = fault_plan(rng, args.rounds, args.kinds)
    world = World(root, template, servers=args.servers)
    versions = iter(range(2, 1_000_000))
    violations: list[str] = []
    known: set[str] = set()
    faults: Counter[str] = Counter()
    played = 0
    try:
        world.start()
        first = world.cli(*world.publish_args("1", 10))
        if first.code != 0:
            print(f"first publish failed: {first.stderr.strip()}")
            return 1
        print(
            f"fleet of {len(world.servers)} on {world.repository}: ready in "
            f"{time.monotonic() - started:.1f} s"
        )
        images = shapes_images(8, IMGSZ, args.seed)
        downtime = Downtime(len(world.servers))
        watch = ProcessWatch(world)
        router = Router(
            MODEL,
            url=world.urls,
            repository=world.repository,
            s3_endpoint=world.endpoint,
        )  # the default deadline: a hung server leaves the rotation after one miss
        routed = RouterTraffic(router, images, args.router_threads, args.pause)
        unpinned = UnpinnedTraffic(
            lambda: world.urls, MODEL, images, downtime, args.unpinned_threads, args.pause
        )
        routed.start()
        unpinned.start()
        try:
            for number, kind in enumerate(plan, 1):
                if time.monotonic() - started > args.max_seconds:
                    print(f"stopping after {played} rounds: --max-seconds {args.max_seconds:.0f}")
                    break
                began, mark = time.monotonic(), len(world.steps)
                before = (routed.snapshot(), unpinned.snapshot())
                game = Round(
                    world=world,
                    rng=rng,
                    downtime=downtime,
                    watch=watch,
                    kind=kind,
                    next_version=lambda: str(next(versions)),
                )
                reconciled = game.play()
                world.unstage()
                state = read_state(world)
                found = [*game.problems, *check_phase(state)]
                found += check_servers(world, state, reconciled)
                found += check_repository(world, state)
                found += watch.check()
                found += check_secrets(world)
                faults[kind] += 1
                played += 1
                after = (routed.snapshot(), unpinned.snapshot())
                steps = "steps: " + ", ".join(
                    f"{o.args[0]} {'killed' if o.killed else o.code} {o.seconds:.1f}s"
                    for o in world.steps[mark:]
                )
                notes = [steps, *game.notes]
                # A violation that persists (a leaked region) is reported in its first round.
                fresh = [line for line in found if line not in known]
                known.update(found)
                persisting = len(found) - len(fresh)
                print(
                    round_line(number, kind, began, before, after, state, notes, fresh, persisting)
                )
                violations += [f"round {number} ({kind}): {line}" for line in fresh]
        finally:
            routed.stop()
            unpinned.stop()
            router.close()
    finally:
        world.close()
    return summary(played, faults, routed, unpinned, violations, started)


def round_line(
    number: int,
    kind: str,
    began: float,
    before: tuple[tuple[int, int], tuple[int, int]],
    after: tuple[tuple[int, int], tuple[int, int]],
    state: object,
    notes: list[str],
    found: list[str],
    persisting: int,
) -> str:
    routed = (after[0][0] - before[0][0], after[0][1] - before[0][1])
    unpinned = (after[1][0] - before[1][0], after[1][1] - before[1][1])
    where = "no state"
    if state is not None:
        where = f"{state.phase.value} stable {state.stable} canary {state.canary}"  # type: ignore[attr-defined]
    lines = [
        f"round {number:2d} {kind:16s} {time.monotonic() - began:5.1f} s  "
        f"router {routed[0]} sent {routed[1]} failed, unpinned {unpinned[0]} sent "
        f"{unpinned[1]} failed; {where}; "
        + (f"{len(found)} VIOLATED" if found else "invariants held" if not persisting else "")
        + (f" ({persisting} earlier violation(s) persist)" if persisting else "")
    ]
    lines += [f"    {note}" for note in notes]
    lines += [f"    VIOLATION {line}" for line in found]
    return "\n".join(lines)


def summary(
    played: int,
    faults: Counter[str],
    routed: RouterTraffic,
    unpinned: UnpinnedTraffic,
    violations: list[str],
    started: float,
) -> int:
    print(f"rounds: {played} in {time.monotonic() - started:.0f} s; {load_now()}")
    print("faults: " + ", ".join(f"{kind} {faults[kind]}" for kind in KINDS))
    print(
        f"requests: router {routed.sent} sent, {len(routed.failures)} failed "
        f"(versions {dict(sorted(routed.by_version.items(), key=lambda i: int(i[0])))}); "
        f"unpinned {unpinned.sent} sent, {len(unpinned.failures)} failed to servers that "
        f"stayed up, {unpinned.excused} to a killed server (excused)"
    )
    for failure in sorted(set(routed.failures))[:10]:
        print(f"  router failure: {failure}")
    for failure in sorted(set(unpinned.failures))[:10]:
        print(f"  unpinned failure: {failure}")
    print(f"invariant violations: {len(violations)}")
    for line in violations:
        print(f"  {line}")
    failed = bool(routed.failures or unpinned.failures or violations)
    print("soak: FAILED" if failed else "soak: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
