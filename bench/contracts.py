"""The served contracts side by side: raw ``[B, 4+nc, N]`` vs end-to-end ``[B, K, 6]``.

Part 1 (an 80-class YOLOv8n at 640 px, the same weights published twice into one embedded
Triton, once per contract): ``Router.detect`` per image, alternating round by round, its
wall time and the client process's CPU time per image (letterbox, transfer, decode: NMS
in numpy for raw, a filter for end-to-end), and the bytes of each answer. The weights are
untrained (nothing may be downloaded): the class bias sets how many candidates each NMS
sees (``--class-bias``; Ultralytics' own init, about -7.9 at 80 classes, leaves none above
the graph's 0.001 floor, 0 leaves every anchor), printed with the figures.

Part 2 (``--imgsz 320 640``): the end-to-end graph served (``Router.infer``, shared memory)
vs the same ``model.onnx`` run in-process by onnxruntime with the served session's
settings, alternating round by round. Goal: served / in-process median <= 1.15 (what the
raw graph measured with shared memory, BENCHMARKS.md item 2).

    python bench/contracts.py [--rounds 60] [--imgsz 320 640] [--class-bias -7.9 -4] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    BenchStack,
    bench_stack,
    interleaved,
    load_now,
    machine,
    median,
    met,
    pct,
)
from bench.serving import ort_session, request, served_threads  # noqa: E402
from export.shapes import generate_shapes_image  # noqa: E402
from repo_manager import Router  # noqa: E402
from repo_manager.contract import END2END, RAW, bytes_per_image  # noqa: E402
from repo_manager.names import versions_model_name  # noqa: E402

CLASSES = 80
SERVED_GOAL = 1.15


def untrained(root: Path, *, imgsz: int, class_bias: float | None) -> Path:
    from export.tiny_detector import make_untrained_detector

    name = f"yolov8n-80-{imgsz}-{'init' if class_bias is None else class_bias}.pt"
    return make_untrained_detector(
        root / name, nc=CLASSES, imgsz=imgsz, class_bias=class_bias, seed=1
    )


def with_cpu(fn: Callable[[], object], cpu: list[int]) -> Callable[[], object]:
    """``fn`` that also records this process's CPU time (every thread) per call."""

    def call() -> object:
        started = time.process_time_ns()
        result = fn()
        cpu.append(time.process_time_ns() - started)
        return result

    return call


def detect_part(stack: BenchStack, root: Path, class_bias: float | None, rounds: int) -> None:
    imgsz = 640
    weights = untrained(root, imgsz=imgsz, class_bias=class_bias)
    tag = "init" if class_bias is None else f"{class_bias:g}".replace("-", "m").replace(".", "p")
    names = {c: f"c{CLASSES}-{c}-{tag}" for c in (RAW, END2END)}
    for contract, model in names.items():
        stack.publish(model, "1", weights, imgsz=imgsz, contract=contract)
    image = generate_shapes_image(imgsz=imgsz, seed=3).image
    routers = {c: Router(m, stack.url, stack.repository) for c, m in names.items()}
    cpu: dict[str, list[int]] = {c: [] for c in names}
    try:
        fns = [with_cpu(partial(routers[c].detect, image), cpu[c]) for c in names]
        interleaved(fns, 3)
        for values in cpu.values():
            values.clear()
        times = interleaved(fns, rounds)
        found = {c: len(routers[c].detect(image)) for c in names}
        candidates = len(routers[END2END].detect(image, conf=0.001))
    finally:
        for router in routers.values():
            router.close()
    bias = "Ultralytics' init" if class_bias is None else f"{class_bias:g}"
    print(
        f"\n[1] Router.detect, {CLASSES} classes at {imgsz} px, class bias {bias}: "
        f"{found[END2END]} detections at conf 0.25 ({found[RAW]} raw), {candidates} rows above "
        f"the graph's 0.001 floor; {rounds} interleaved rounds; {load_now()}"
    )
    print(f"  {'contract':9} {'bytes/image':>12} {'median ms':>10} {'p95 ms':>8} {'CPU ms':>8}")
    for (contract, values), spent in zip(zip(names, times, strict=True), cpu.values(), strict=True):
        size = bytes_per_image(contract, num_classes=CLASSES, imgsz=imgsz)
        print(
            f"  {contract:9} {size:12,d} {median(values) / 1e6:10.2f} "
            f"{pct(values, 95) / 1e6:8.2f} {median(spent) / 1e6:8.2f}"
        )
    ratio = median(times[1]) / median(times[0])
    cpu_ratio = median(cpu[END2END]) / median(cpu[RAW])
    print(f"  end2end / raw: wall {ratio:.3f}, client CPU {cpu_ratio:.3f} (medians)")


def served_part(stack: BenchStack, root: Path, imgsz: int, rounds: int) -> None:
    weights = untrained(root, imgsz=imgsz, class_bias=None)
    model = f"e2e-{imgsz}"
    stack.publish(model, "1", weights, imgsz=imgsz, contract=END2END)
    onnx = stack.repository / versions_model_name(model) / "1" / "model.onnx"
    images = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    session = ort_session(onnx, served_threads(), spinning=True)
    router = Router(model, stack.url, stack.repository)
    try:
        fns = [
            partial(session.run, None, {"images": images}),
            partial(router.infer, request(images)),
        ]
        interleaved(fns, 5)
        times = interleaved(fns, rounds)
    finally:
        router.close()
    ratio = median(times[1]) / median(times[0])
    print(
        f"\n[2] end-to-end graph at {imgsz} px, batch 1, {rounds} interleaved rounds; "
        f"{load_now()}\n"
        f"  in-process {median(times[0]) / 1e6:.2f} ms, served {median(times[1]) / 1e6:.2f} ms "
        f"(medians): served / in-process {ratio:.3f} (goal <= {SERVED_GOAL}: "
        f"{met(ratio, SERVED_GOAL)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument(
        "--class-bias",
        type=float,
        nargs="*",
        default=[-4.0],
        help="class biases of the 80-class model, besides Ultralytics' own init",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, not figures")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    print(machine())
    with (
        tempfile.TemporaryDirectory(prefix="bench-contracts-") as tmp,
        bench_stack(Path(tmp)) as stack,
    ):
        for bias in [None, *([] if args.quick else args.class_bias)]:
            detect_part(stack, Path(tmp), bias, rounds)
        for imgsz in [320] if args.quick else args.imgsz:
            served_part(stack, Path(tmp), imgsz, rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
