"""Does warm-up really warm? The first request to a freshly READY canary vs its steady median.

Publishes ``yolo`` version 1 as stable into a fresh embedded Triton, then repeatedly
publishes a canary (at 0%) through ``RolloutManager``: ``publish`` returns once every server
reports the version READY, i.e. after the config's ``model_warmup`` ran. The very first
request pinned to that version is timed, then ``--steady`` more; the canary is rolled back
and the next one published. Rounds rotate between the exported config (its
``model_warmup`` as shipped), the same warm-up run once (``count 1``, what it was before)
and no warm-up at all, so the "before/after" is side by side.
Goal: first / steady median <= 1.5 with the exported warm-up.

    python bench/warmup.py [--rounds 6] [--imgsz 320] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from bench.common import bench_stack, detector_weights, load_now, machine, median, met  # noqa: E402
from repo_manager import Router  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=9, help="canaries (a third per variant)")
    parser.add_argument("--steady", type=int, default=20)
    parser.add_argument(
        "--settle", type=float, default=0.0, help="seconds to wait after READY (diagnosis)"
    )
    parser.add_argument("--quick", action="store_true", help="a few rounds: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.imgsz, args.rounds, args.steady = 160, 3, 5
    print(machine())
    weights = detector_weights(args.weights)
    rng = np.random.default_rng(0)
    ratios: dict[str, list[float]] = {"exported warm-up": [], "warm-up count 1": [], "none": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-warmup-") as tmp,
        bench_stack(Path(tmp)) as stack,
    ):
        stack.publish("yolo", "1", weights, imgsz=args.imgsz)
        repo = stack.manager.repository  # type: ignore[attr-defined]
        exported = repo.require_config("yolo")
        with Router("yolo", stack.url, stack.repository) as router:
            warm = grpcclient.InferInput("images", [1, 3, args.imgsz, args.imgsz], "FP32")
            warm.set_data_from_numpy(np.zeros((1, 3, args.imgsz, args.imgsz), np.float32))
            for _ in range(3):  # the client side (channel, shm region) warms on stable
                router.infer([warm])
            for i in range(args.rounds):
                label = list(ratios)[i % len(ratios)]
                config = type(exported)()
                config.CopyFrom(repo.require_config("yolo"))
                config.ClearField("model_warmup")
                if label != "none":
                    config.model_warmup.extend(exported.model_warmup)
                if label == "warm-up count 1":
                    for sample in config.model_warmup:
                        sample.count = 1
                repo.write_config("yolo", config)
                version = str(i + 2)
                stack.publish("yolo", version, weights, imgsz=args.imgsz, canary_weight=0)
                time.sleep(args.settle)
                times = []
                for _ in range(1 + args.steady):
                    images = rng.random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)
                    tensor = grpcclient.InferInput("images", list(images.shape), "FP32")
                    tensor.set_data_from_numpy(images)
                    started = time.perf_counter()
                    router.infer([tensor], version=version)
                    times.append(time.perf_counter() - started)
                ratio = times[0] / median(times[1:])
                ratios[label].append(ratio)
                print(
                    f"  v{version} {label:17} first {times[0] * 1e3:7.1f} ms, steady median "
                    f"{median(times[1:]) * 1e3:6.1f} ms, ratio {ratio:5.2f}; {load_now()}"
                )
                stack.manager.rollback("yolo")  # type: ignore[attr-defined]
        warmup = exported.model_warmup
        print(
            f"\n[4] warm-up, imgsz {args.imgsz}: config model_warmup "
            + ", ".join(f"{w.name} batch {w.batch_size} count {w.count or 1}" for w in warmup)
        )
        for label, values in ratios.items():
            if values:
                print(
                    f"  {label:18} first/steady median {median(values):5.2f}, worst "
                    f"{max(values):5.2f} over {len(values)} canaries"
                )
        worst = max(ratios["exported warm-up"])
        print(f"  goal worst <= 1.5 with warm-up: {met(worst, 1.5)}")


if __name__ == "__main__":
    main()
