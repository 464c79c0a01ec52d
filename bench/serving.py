"""Serving through the embedded Triton and the Router vs onnxruntime in-process, same ONNX.

Item 2 (latency, batch 1, infer only): for each ``--imgsz`` one detector is published into
a fresh embedded Triton (python backend running onnxruntime), and these sides alternate
round by round on one fixed preprocessed input:

    in-process    onnxruntime.InferenceSession.run on the version's model.onnx, with the
                  served session's settings (same thread count)
    plain gRPC    Router.infer(shared_memory=False)
    shm           Router.infer(shared_memory=True)  (the default for a local server)

plus, with ``--levers``, the backend variants (dlpack transfer, one onnxruntime thread)
served by sibling models in the same server, so every lever is measured side by side.
Goal: served/in-process median <= 1.10.

Item 3 (throughput): ``--concurrency`` client threads through one Router (dynamic batching
as the exported config has it) vs one in-process session looping at batch 1, in
alternating windows of ``--window`` seconds. Goal: served/in-process >= 1.0.

Item 8 (``--parts public``, in ``bench/public_names.py``): pinned vs the public name (alias) vs
the weighted public name, side by side at each ``--imgsz``.

Item 7 (``--plan``): the same for a TensorRT FP16 plan served by a Triton with the TensorRT
backend (``--url``/``--repository``) vs the TensorRT runtime in-process; skipped, with
why, where there is no GPU or TensorRT.

    python bench/serving.py [--imgsz 320 640] [--rounds 300] [--levers] [--quick]
        [--parts latency throughput public]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from bench.common import (  # noqa: E402
    BenchStack,
    bench_stack,
    detector_weights,
    interleaved,
    load_now,
    machine,
    median,
    met,
    pct,
    publish_weights,
    reconfigure,
)
from bench.public_names import public_names  # noqa: E402
from repo_manager import Router  # noqa: E402
from repo_manager.names import versions_model_name  # noqa: E402

THREADS_PARAM = "onnxruntime_intra_op_threads"
SPIN_PARAM = "onnxruntime_allow_spinning"
#: export/backend/model.py's TIMINGS_ENV (that module imports the stub's pb_utils).
TIMINGS_ENV = "REPO_MANAGER_BACKEND_TIMINGS"


@dataclass(kw_only=True, frozen=True)
class Served:
    """One served side: a sibling model whose config differs as ``change`` says."""

    suffix: str = ""  # model name suffix; "" is the exported config as shipped
    parameters: tuple[tuple[str, str], ...] = ()
    queue_delay_us: int | None = None
    shared_memory: bool = True


#: Each lever alone on top of the exported defaults (``--levers``), then the defaults.
LEVERS = {
    "plain gRPC (no shm)": Served(suffix="grpc", shared_memory=False),
    "shm (default)": Served(),
    "shm + dlpack inputs": Served(suffix="dlpack", parameters=(("tensor_transfer", "dlpack"),)),
    "shm + 1 ORT thread": Served(suffix="t1", parameters=((THREADS_PARAM, "1"),)),
    "shm + ORT spinning on": Served(suffix="spin1", parameters=((SPIN_PARAM, "1"),)),
    "shm + ORT spinning off": Served(suffix="spin0", parameters=((SPIN_PARAM, "0"),)),
    "shm + queue delay 500us": Served(suffix="q500", queue_delay_us=500),
}
DEFAULT_SIDES = ("plain gRPC (no shm)", "shm (default)")
PARTS = ("latency", "throughput", "public")


def ort_session(onnx: Path, threads: int, *, spinning: bool) -> Any:
    """onnxruntime as the served backend builds it (see export/backend/model.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return ort.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])


def served_threads() -> int:
    """The backend's default intra-op thread count on this machine."""
    return min(len(os.sched_getaffinity(0)), 4)


def request(images: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return [tensor]


def server_stats(url: str, model: str) -> dict[str, int]:
    """Triton's cumulative per-model timings (ns) and request count for version 1."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(versions_model_name(model), "1")
        stats = stats.model_stats[0].inference_stats
    return {
        "count": stats.success.count,
        "queue": stats.queue.ns,
        "input": stats.compute_input.ns,
        "infer": stats.compute_infer.ns,
        "output": stats.compute_output.ns,
    }


def publish_served(stack: BenchStack, weights: Path, imgsz: int, served: Served) -> str:
    """The model serving ``served`` (published once; siblings share the export)."""
    name = f"yolo{imgsz}" + (f"_{served.suffix}" if served.suffix else "")
    if stack.manager.state(name) is not None:  # type: ignore[attr-defined]
        return name

    def change(config: Any) -> None:
        for key, value in served.parameters:
            config.parameters[key].string_value = value
        if served.queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = served.queue_delay_us

    stack.publish(name, "1", weights, imgsz=imgsz)
    if served.parameters or served.queue_delay_us is not None:
        reconfigure(stack, name, change)
    return name


def latency(stack: BenchStack, weights: Path, imgsz: int, args: argparse.Namespace) -> None:
    threads = served_threads()
    labels = list(LEVERS) if args.levers else list(DEFAULT_SIDES)
    served = publish_served(stack, weights, imgsz, Served())
    onnx = stack.repository / versions_model_name(served) / "1" / "model.onnx"
    images = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    feed = {"images": images}
    # The in-process reference at its best: both spinning settings, the faster one counts.
    sides: dict[str, Callable[[], object]] = {}
    for spinning in (True, False):
        session = ort_session(onnx, threads, spinning=spinning)
        sides[f"in-process, spinning {'on' if spinning else 'off'}"] = partial(
            session.run, None, feed
        )
    local = len(sides)
    inputs = request(images)
    routers = []
    for label in labels:
        served = LEVERS[label]
        model = publish_served(stack, weights, imgsz, served)
        router = Router(model, stack.url, stack.repository, shared_memory=served.shared_memory)
        routers.append(router)
        sides[label] = partial(router.infer, inputs)
    default_model = f"yolo{imgsz}"
    try:
        fns = list(sides.values())
        interleaved(fns, args.warmup, gap=args.gap)
        before = server_stats(stack.url, default_model)
        if args.profile:
            args.timings.write_text("")
        times = interleaved(fns, args.rounds, gap=args.gap)
        after = server_stats(stack.url, default_model)
    finally:
        for router in routers:
            router.close()
    ref = min(range(local), key=lambda i: median(times[i]))
    ref_med, ref_p99 = median(times[ref]), pct(times[ref], 99)
    print(
        f"\n[2] latency, imgsz {imgsz}, batch 1, {args.rounds} interleaved rounds, "
        f"ORT threads {threads}, {args.gap * 1e3:.0f} ms idle between calls; {load_now()}"
    )
    print(f"  {'side':28} {'median ms':>10} {'p99 ms':>9} {'ratio med':>10} {'ratio p99':>10}")
    for label, values in zip(sides, times, strict=True):
        med, p = median(values), pct(values, 99)
        print(
            f"  {label:28} {med / 1e6:10.2f} {p / 1e6:9.2f} {med / ref_med:10.3f} "
            f"{p / ref_p99:10.3f}"
        )
    default_times = times[list(sides).index("shm (default)")]
    default = median(default_times) / ref_med
    count = max(after["count"] - before["count"], 1)
    per = {k: (after[k] - before[k]) / count / 1e6 for k in after if k != "count"}
    client_side = sum(default_times) / len(default_times) / 1e6 - sum(per.values())
    print(
        f"  where a served request's time goes (shm, default model, means over {count} "
        f"requests, Triton's statistics): queue {per['queue']:.2f} ms, input {per['input']:.2f}"
        f" ms, execute {per['infer']:.2f} ms (python stub + onnxruntime), output "
        f"{per['output']:.2f} ms; client + gRPC + Triton front end {client_side:.2f} ms; "
        f"in-process mean {sum(times[ref]) / len(times[ref]) / 1e6:.2f} ms"
    )
    if args.profile:
        lines = [line.split() for line in args.timings.read_text().splitlines()]
        runs = [float(run) for model, run, _ in lines if model == default_model]
        executes = [float(ex) for model, _, ex in lines if model == default_model]
        print(
            f"  profile (shm default, medians): onnxruntime run in the stub "
            f"{median(runs):.2f} ms, stub execute() {median(executes):.2f} ms, Triton execute "
            f"(mean) {per['infer']:.2f} ms, client {median(default_times) / 1e6:.2f} ms; "
            f"in-process run {median(times[ref]) / 1e6:.2f} ms"
        )
    print(
        f"  served (defaults) / best in-process median: {default:.3f} "
        f"(goal <= 1.10: {met(default, 1.10)})"
    )


def throughput(stack: BenchStack, weights: Path, imgsz: int, args: argparse.Namespace) -> None:
    """Windows rotate: each served model (8 client threads), then in-process (1 thread)."""
    labels = ["shm (default)"] + (["shm + queue delay 500us"] if args.levers else [])
    models = [publish_served(stack, weights, imgsz, LEVERS[label]) for label in labels]
    config = stack.manager.repository.require_config(models[0])  # type: ignore[attr-defined]
    batching = config.dynamic_batching
    onnx = stack.repository / versions_model_name(models[0]) / "1" / "model.onnx"
    session = ort_session(onnx, served_threads(), spinning=True)
    images = np.random.default_rng(1).random((1, 3, imgsz, imgsz), dtype=np.float32)
    inputs = request(images)
    routers = [Router(m, stack.url, stack.repository) for m in models]

    def served_window(router: Router, seconds: float) -> int:
        stop = time.perf_counter() + seconds
        counts = [0] * args.concurrency

        def worker(slot: int) -> None:
            while time.perf_counter() < stop:
                router.infer(inputs)
                counts[slot] += 1

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(counts)

    def inprocess_window(seconds: float) -> int:
        stop, count = time.perf_counter() + seconds, 0
        while time.perf_counter() < stop:
            session.run(None, {"images": images})
            count += 1
        return count

    windows: list[Callable[[float], int]] = [partial(served_window, r) for r in routers]
    windows.append(inprocess_window)
    for router in routers:
        served_window(router, 1.0)
    totals = [0] * len(windows)
    for i in range(args.windows):
        order = range(len(windows)) if i % 2 == 0 else reversed(range(len(windows)))
        for k in order:
            totals[k] += windows[k](args.window)
    for router in routers:
        router.close()
    seconds = args.windows * args.window
    print(
        f"\n[3] throughput, imgsz {imgsz}: {args.concurrency} threads through the Router (shm; "
        f"max_batch_size {config.max_batch_size}, dynamic batching, preferred sizes "
        f"{list(batching.preferred_batch_size) or 'none'}) vs one in-process session at "
        f"batch 1; {args.windows} rotations of {args.window:.0f} s windows; {load_now()}"
    )
    local = max(totals[-1], 1)
    for label, total in zip(labels, totals, strict=False):
        ratio = total / local
        print(
            f"  served, {label:26} {total / seconds:8.1f} req/s  ratio {ratio:.3f} "
            f"(goal >= 1.0: {met(ratio, 1.0, at_most=False)})"
        )
    print(f"  in-process, batch 1 {'':18} {local / seconds:8.1f} req/s")


def plan_comparison(args: argparse.Namespace) -> None:
    """Item 7: a TensorRT FP16 plan served by Triton vs the TensorRT runtime in-process."""
    try:
        from export.tensorrt import require_tensorrt

        gpu = require_tensorrt()
    except Exception as exc:  # the reason is the report
        print(f"\n[7] TensorRT plan served vs in-process: skipped ({exc})")
        return
    if args.url is None or args.repository is None:
        print("\n[7] TensorRT plan: skipped (needs --url and --repository of a Triton with the")
        print("    TensorRT backend, e.g. the docker-compose stack; the embedded one has none)")
        return
    from export import ExportOptions
    from export.tensorrt import PlanRunner
    from repo_manager.repository import ModelRepository
    from repo_manager.rollout import RolloutManager
    from repo_manager.storage import open_storage
    from repo_manager.triton import TritonFleet

    weights = detector_weights(args.weights)
    fleet = TritonFleet([args.url])
    manager = RolloutManager(ModelRepository(open_storage(args.repository)), fleet)
    print(f"\n[7] TensorRT {gpu['tensorrt']} on {gpu['gpu']}; {load_now()}")
    for imgsz in args.imgsz:
        model = f"yolo{imgsz}_plan_{int(time.time())}"
        options = ExportOptions(format="plan", imgsz=imgsz, fp16=True, max_batch=8)
        publish_weights(manager, model, "1", weights, options)
        runner = PlanRunner(Path(args.repository) / versions_model_name(model) / "1" / "model.plan")
        images = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        inputs = request(images)
        with Router(model, args.url, args.repository) as router:
            fns = [partial(runner, images), partial(router.infer, inputs)]
            interleaved(fns, args.warmup)
            local, served = interleaved(fns, args.rounds)
        ratio = median(served) / median(local)
        print(
            f"  imgsz {imgsz}: in-process {median(local) / 1e6:.2f} ms, served "
            f"{median(served) / 1e6:.2f} ms, ratio {ratio:.3f} (goal <= 1.10: {met(ratio, 1.1)})"
        )
    fleet.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.01, help="idle seconds between timed calls")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="split the served default's execute into onnxruntime and the rest",
    )
    parser.add_argument("--levers", action="store_true", help="also dlpack and 1-thread variants")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--plan", action="store_true", help="item 7 (GPU + TensorRT)")
    parser.add_argument("--url", default=None, help="--plan: Triton with the TensorRT backend")
    parser.add_argument("--repository", default=None, help="--plan: that Triton's repository")
    parser.add_argument("--quick", action="store_true", help="a few rounds: a smoke run")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="latency (item 2), throughput (item 3), public (item 8)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.imgsz, args.rounds, args.warmup = [160], 10, 3
        args.window, args.windows = 1.0, 2
    print(machine())
    if args.plan:
        plan_comparison(args)
        return
    weights = detector_weights(args.weights)
    if args.profile:
        args.timings = Path(tempfile.mkdtemp(prefix="bench-timings-")) / "backend.log"
        os.environ[TIMINGS_ENV] = str(args.timings)  # the server (and its stubs) inherit it
    with (
        tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp,
        bench_stack(Path(tmp)) as stack,
    ):
        if "latency" in args.parts:
            for imgsz in args.imgsz:
                latency(stack, weights, imgsz, args)
        if "throughput" in args.parts:
            for imgsz in args.imgsz:
                throughput(stack, weights, imgsz, args)
        if "public" in args.parts:
            public_names(stack, weights, args.imgsz, args.rounds)


if __name__ == "__main__":
    main()
