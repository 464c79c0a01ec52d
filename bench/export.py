"""Export and engine-build times, and engine latency vs onnxruntime, side by side in one run.

    .venv/bin/python bench/export.py [--weights W.pt] [--imgsz 320] [--rounds 200]

Always: `.pt -> ONNX (+ numerical check)` time of the python format, and onnxruntime
latency (CPU provider) on one fixed input. Where a CUDA GPU with TensorRT exists: FP16
plan build time with a cold timing cache vs the same build with the cache warm, and the
plan's latency through the TensorRT runtime vs onnxruntime on the same input, alternating
round by round. On a CPU machine the TensorRT half is reported as skipped, with why.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and this file would shadow
# the `export` package it measures.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402

from export import ExportOptions, export_model  # noqa: E402
from export.tiny_detector import make_untrained_detector  # noqa: E402


def timed_export(weights: Path, out: Path, options: ExportOptions) -> tuple[float, Path]:
    started = time.perf_counter()
    result = export_model(weights, out, model_name="bench", options=options)
    return time.perf_counter() - started, result.version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=None, help="default: untrained yolov8n")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        weights = args.weights or make_untrained_detector(work / "yolov8n.pt")
        seconds, version = timed_export(
            weights, work / "python", ExportOptions(format="python", imgsz=args.imgsz)
        )
        print(f"export .pt -> ONNX + check (python format, imgsz {args.imgsz}): {seconds:.2f} s")

        session = ort.InferenceSession(
            str(version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        images = np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), np.float32)

        def onnxruntime_ms() -> float:
            started = time.perf_counter()
            session.run(None, {name: images})
            return (time.perf_counter() - started) * 1e3

        try:
            from export.tensorrt import require_tensorrt

            machine = require_tensorrt()
        except Exception as exc:  # the reason is the report
            ort_ms = statistics.median(onnxruntime_ms() for _ in range(args.rounds))
            print(f"onnxruntime CPU median latency: {ort_ms:.2f} ms")
            print(f"TensorRT build/latency: skipped ({exc})")
            return

        cache = work / "trt-cache"
        cold, _ = timed_export(
            weights,
            work / "plan-cold",
            ExportOptions(format="plan", imgsz=args.imgsz, fp16=True, cache_dir=cache),
        )
        warm, plan_version = timed_export(
            weights,
            work / "plan-warm",
            ExportOptions(format="plan", imgsz=args.imgsz, fp16=True, cache_dir=cache),
        )
        print(f"TensorRT {machine['tensorrt']} on {machine['gpu']}:")
        print(
            f"  FP16 export with cold timing cache: {cold:.1f} s, warm: {warm:.1f} s "
            f"(warm/cold {warm / cold:.2f})"
        )

        from export.plans import plan_filename
        from export.tensorrt import PlanRunner

        run_plan = PlanRunner(plan_version / plan_filename(machine["compute_capability"]))
        run_plan(images)  # warm-up
        trt_times, ort_times = [], []
        for i in range(args.rounds):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                started = time.perf_counter()
                if which == 0:
                    run_plan(images)
                    trt_times.append((time.perf_counter() - started) * 1e3)
                else:
                    session.run(None, {name: images})
                    ort_times.append((time.perf_counter() - started) * 1e3)
        trt_ms, ort_ms = statistics.median(trt_times), statistics.median(ort_times)
        print(
            f"  median latency, batch 1: TensorRT {trt_ms:.2f} ms vs onnxruntime CPU "
            f"{ort_ms:.2f} ms (ratio {trt_ms / ort_ms:.3f}, host copies included)"
        )


if __name__ == "__main__":
    main()
