"""What a canary costs in memory (one Triton).

Part 1 (memory): ``MODEL`` version 1 is published as stable into a fresh embedded Triton;
once its stubs have settled, the steady resident memory of tritonserver plus every process
below it (VmRSS summed, ``tests/integration/stubs.py``) is taken. Version 2 is exported
beforehand and then published as the canary while a thread samples that sum every 20 ms,
from the start of the publish (stage, load, warm-up) until the stubs have settled again
(a replaced stub may still be exiting after ``publish`` returns); then the steady RSS with
both versions loaded. Goal: peak during the load / steady with both <= 1.05. The stable's
stub PID must be the same before and after (a new PID: Triton re-initialized the stable).

The public name's latency (alias and weighted) is item 8 of ``bench/serving.py``.

    python bench/memory.py [--imgsz 320] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]


from bench.common import (  # noqa: E402
    BenchStack,
    bench_stack,
    detector_weights,
    load_now,
    machine,
    median,
    met,
)
from tests.integration.stubs import StubProcess, stub_processes, tree_rss_bytes  # noqa: E402

MiB = 1024 * 1024
SAMPLE_EVERY = 0.02


def settled_stubs(
    server_pid: int, *, quiet: float = 1.0, timeout: float = 60.0
) -> list[StubProcess]:
    """The stubs once each (model, version) has one and the PIDs held still for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last: list[tuple[str, str, int]] | None = None
    since = time.monotonic()
    while True:
        stubs = stub_processes(server_pid)
        now = [(s.model, s.version, s.pid) for s in stubs]
        single = len({(m, v) for m, v, _ in now}) == len(now)
        if now != last or not single:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return stubs
        if time.monotonic() > deadline:
            print(f"  (stubs did not settle in {timeout:.0f} s: {now})")
            return stubs
        time.sleep(0.1)


def steady_rss(server_pid: int, seconds: float) -> int:
    """Median tree RSS over ``seconds`` of 20 ms samples."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(tree_rss_bytes(server_pid))
        time.sleep(SAMPLE_EVERY)
    return int(median(samples))


class Sampler(threading.Thread):
    """Tree RSS every 20 ms, and every stub PID seen, until ``stop``."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.samples: list[tuple[float, int]] = []  # (monotonic time, bytes)
        self.stubs_seen: dict[int, tuple[str, str]] = {}  # pid -> (model, version)
        self.most_stubs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        tick = time.monotonic()
        while True:
            stubs = stub_processes(self.server_pid)
            self.samples.append((time.monotonic(), tree_rss_bytes(self.server_pid)))
            self.most_stubs = max(self.most_stubs, len(stubs))
            for stub in stubs:
                self.stubs_seen.setdefault(stub.pid, (stub.model, stub.version))
            tick = max(tick + SAMPLE_EVERY, time.monotonic())  # a fixed schedule, no drift
            if self._stop_event.wait(tick - time.monotonic()):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def memory_part(stack: BenchStack, weights: Path, model: str, imgsz: int, steady_s: float) -> None:
    from export import ExportOptions, export_model

    server_pid = stack.server.pid  # type: ignore[attr-defined]
    assert server_pid is not None
    options = ExportOptions(format="python", imgsz=imgsz, max_batch=8)
    stack.publish(model, "1", weights, imgsz=imgsz)
    # Exported before the sampled window: the export runs in this process, not in Triton.
    exported = stack.root / "exported" / model
    export_model(weights, exported, model_name=model, version="2", options=options)
    status = stack.manager.status(model)  # type: ignore[attr-defined]
    stable = str(status["stable"])
    stable_key = (str(status["versions_model"]), stable)

    before_stubs = settled_stubs(server_pid)
    stable_only = steady_rss(server_pid, steady_s)
    before = {(s.model, s.version): s.pid for s in before_stubs}
    if stable_key not in before:
        sys.exit(f"no stub for {stable_key} below tritonserver {server_pid}: {before_stubs}")

    sampler = Sampler(server_pid)
    sampler.start()
    started = time.monotonic()
    stack.manager.publish(  # type: ignore[attr-defined]
        model, "2", staged=exported, canary_weight=10
    )
    published = time.monotonic() - started
    after_stubs = settled_stubs(server_pid)
    sampler.stop()
    both = steady_rss(server_pid, steady_s)
    after = {(s.model, s.version): s.pid for s in after_stubs}

    times = [t for t, _ in sampler.samples]
    peak_t, peak = max(sampler.samples, key=lambda s: s[1])
    interval = (times[-1] - times[0]) / max(1, len(times) - 1)
    ratio = peak / both
    print(
        f"\n[memory] {model} at {imgsz} px, tritonserver pid {server_pid}; tree RSS = "
        f"tritonserver + its descendants (VmRSS summed); {load_now()}"
    )
    print(
        f"  {f'stable only (v{stable}), steady':31} {stable_only / MiB:7.1f} MiB, "
        f"{len(before_stubs)} stub(s)"
    )
    print(
        f"  {'canary v2 load + warm-up, peak':31} {peak / MiB:7.1f} MiB "
        f"at {peak_t - started:.2f} s (publish returned at {published:.2f} s, stubs settled at "
        f"{times[-1] - started:.2f} s); {sampler.most_stubs} stubs at most; "
        f"{len(times)} samples, one per {interval * 1e3:.1f} ms"
    )
    print(
        f"  {'both loaded, steady':31} {both / MiB:7.1f} MiB "
        f"(canary adds {(both - stable_only) / MiB:+.1f} MiB), {len(after_stubs)} stub(s)"
    )
    print(f"  goal peak during load / steady with both {ratio:.2f} <= 1.05: {met(ratio, 1.05)}")
    key_text = f"{stable_key[0]}/{stable_key[1]}"
    seen = sorted(pid for pid, key in sampler.stubs_seen.items() if key == stable_key)
    pid_after = after.get(stable_key)
    same = pid_after == before[stable_key]
    print(
        f"  stable stub ({key_text}) PID before {before[stable_key]}, after {pid_after}: "
        f"{'unchanged' if same else 'CHANGED (Triton re-initialized the stable)'}; "
        f"its stubs seen during the load: {', '.join(map(str, seen))}"
    )
    started_new = sorted(set(sampler.stubs_seen) - {s.pid for s in before_stubs})
    print(
        f"  stubs started during the load: {len(started_new)} "
        + "("
        + ", ".join(
            f"{sampler.stubs_seen[p][0]}/{sampler.stubs_seen[p][1]} {p}" for p in started_new
        )
        + "); 2 (the canary's) when nothing is re-initialized: a newly loaded python "
        "version starts two stubs, and the first exits before the load returns"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--model", default="yolo")
    parser.add_argument("--imgsz", type=int, default=320, help="part 1's detector size")
    parser.add_argument("--steady", type=float, default=3.0, help="seconds per steady RSS")
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steady = 1.0
    print(machine())
    weights = detector_weights(args.weights)
    with (
        tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp,
        bench_stack(Path(tmp)) as stack,
    ):
        memory_part(stack, weights, args.model, args.imgsz, args.steady)


if __name__ == "__main__":
    main()
