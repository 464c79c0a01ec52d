"""``make demo``: a whole rollout on the embedded Triton, offline, on a CPU, as a story.

Starts an embedded tritonserver on free ports over a fresh demo repository, then runs the
real CLI, each command printed before its output:

1. v1 (the tiny detector) becomes stable;
2. v2 (a second detector, trained with another seed) becomes a 10% canary: a few hundred
   ``Router.detect`` requests split per version, and a plain tritonclient that names no
   version is answered by stable only (Triton's own per-version counts);
3. ``rollout`` promotes v2 through steps on live analysis of Triton's per-version
   counters, while Router traffic runs in the background;
4. a broken v3 (untrained weights) is stopped by the golden gate before any traffic;
5. ``status``, ``history`` and the picture of the rollout (``history --plot``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from export.shapes import generate_shapes_image
from repo_manager import yolo
from repo_manager.names import versions_model_name
from repo_manager.routing import Router
from repo_manager.server import EmbeddedTriton, ServerPorts

MODEL = "yolov8n"


class Demo:
    """The demo's repository and server, and the CLI run against them."""

    def __init__(self, repository: Path, server: EmbeddedTriton) -> None:
        self.repository = repository
        self.server = server

    def run(self, *args: str, expect_failure: bool = False) -> str:
        """Run ``repo-manager ARGS``, print it and its output; stop the demo on a surprise."""
        shown = ["repo-manager", *args]
        print(f"\n$ {' '.join(shown)}", flush=True)
        command = [sys.executable, "-m", "repo_manager.cli", "--repository"]
        command += [str(self.repository), "--url", self.server.grpc_url, *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        sys.stderr.write(done.stderr)
        print(done.stdout, end="", flush=True)
        if (done.returncode != 0) != expect_failure:
            said = "failed" if done.returncode else "passed, but the demo expected a refusal"
            raise SystemExit(f"demo step {said}: {' '.join(shown)} (exit {done.returncode})")
        if expect_failure:
            print(f"(exit {done.returncode}, as expected: nothing moved)", flush=True)
        return done.stdout


def router_split(url: str, repository: Path, imgsz: int, requests: int) -> None:
    """``requests`` Router.detect calls; prints how many each version served."""
    rng = np.random.default_rng(0)
    counts: Counter[str] = Counter()
    found = drawn = 0
    start = time.perf_counter()
    with Router(MODEL, url=url, repository=str(repository)) as router:
        for _ in range(requests):
            sample = generate_shapes_image(imgsz=imgsz, rng=rng)
            detections = router.detect(sample.image)
            counts[detections.version] += 1
            found += len(detections.scores)
            drawn += len(sample.classes)
    elapsed = time.perf_counter() - start
    print(
        f"\n{requests} Router.detect requests in {elapsed:.1f}s: "
        f"{found} objects detected, {drawn} drawn"
    )
    for version, count in sorted(counts.items()):
        print(f"  version {version}: {count:4d} requests ({100 * count / requests:.1f}%)")


def unpinned_client(url: str, imgsz: int, *, requests: int) -> None:
    """A client that is not our Router (no version named) calls the public name."""
    versions = versions_model_name(MODEL)
    rng = np.random.default_rng(1)
    with grpcclient.InferenceServerClient(url) as client:

        def counts() -> dict[str, int]:
            stats = client.get_inference_statistics(versions, as_json=True)
            return {
                str(s["version"]): int(s.get("inference_count", 0))
                for s in stats.get("model_stats", [])
            }

        before = counts()
        for _ in range(requests):
            sample = generate_shapes_image(imgsz=imgsz, rng=rng)
            tensor, _ = yolo.preprocess(sample.image, (imgsz, imgsz), np.float32)
            images = grpcclient.InferInput("images", list(tensor.shape), "FP32")
            images.set_data_from_numpy(tensor)
            client.infer(MODEL, [images])
        after = counts()
    served = {v: after.get(v, 0) - before.get(v, 0) for v in sorted(after, key=int)}
    print(
        f"\n{requests} requests from a plain tritonclient naming no version, to {MODEL!r}: "
        f"Triton's own counts per version of {versions!r}: "
        + ", ".join(f"v{v} {n}" for v, n in served.items())
    )


class BackgroundTraffic:
    """Router.detect in a loop while a rollout judges the canary (it needs traffic)."""

    def __init__(self, url: str, repository: Path, imgsz: int) -> None:
        self.router = Router(MODEL, url=url, repository=str(repository))
        self.imgsz = imgsz
        self.stop = threading.Event()
        self.served: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._loop, name="demo-traffic", daemon=True)

    def _loop(self) -> None:
        rng = np.random.default_rng(2)
        while not self.stop.is_set():
            sample = generate_shapes_image(imgsz=self.imgsz, rng=rng)
            self.served[self.router.detect(sample.image).version] += 1
            time.sleep(0.02)

    def __enter__(self) -> BackgroundTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.router.close()
        print(
            "\nRouter traffic during the rollout: "
            + ", ".join(f"v{v} {n}" for v, n in sorted(self.served.items()))
        )


def served_imgsz(repository: Path) -> int:
    """The image size the published model serves (its input's last dimension)."""
    from repo_manager.repository import ModelRepository
    from repo_manager.storage import LocalStorage

    config = ModelRepository(LocalStorage(repository)).require_config(MODEL)
    return int(config.input[0].dims[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, required=True, help="v1: a trained detector .pt")
    parser.add_argument("--weights-v2", type=Path, required=True, help="v2: another detector")
    parser.add_argument("--work", type=Path, default=Path(".cache/demo"))
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    started = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    repository = args.work / "model_repository"
    repository.mkdir(parents=True)
    broken = args.work / "untrained.pt"
    from export.tiny_detector import make_untrained_detector

    make_untrained_detector(broken)
    golden = args.weights.parent / "dataset" / "images" / "val"
    plot = args.work / "rollout.png"
    log = args.work / "tritonserver.log"
    server = EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=log)
    print(f"starting embedded tritonserver on {repository} (log: {log})", flush=True)
    with server:
        demo = Demo(repository, server)
        url = server.grpc_url
        print("\n== 1. v1 becomes stable (image size and class names from the checkpoint)")
        demo.run("publish", MODEL, "1", "--weights", str(args.weights), "--max-batch", "4")
        imgsz = served_imgsz(repository)

        print("\n== 2. v2 as a 10% canary: Router clients split, unpinned clients get stable")
        demo.run("publish", MODEL, "2", "--weights", str(args.weights_v2), "--canary-weight", "10")
        router_split(url, repository, imgsz, args.requests)
        unpinned_client(url, imgsz, requests=100)

        print("\n== 3. rollout promotes v2 step by step on live analysis (Triton's counters)")
        with BackgroundTraffic(url, repository, imgsz):
            demo.run(
                "rollout",
                MODEL,
                "--steps",
                "25,50,100",
                "--interval",
                "4s",
                "--threshold",
                "2",
                "--metrics-url",
                server.metrics_url,
            )

        print("\n== 4. a broken v3 (untrained) meets the golden gate before any traffic")
        demo.run("publish", MODEL, "3", "--weights", str(broken), "--golden", str(golden),
                 expect_failure=True)  # fmt: skip

        print("\n== 5. where things stand, what happened, and the picture of it")
        demo.run("status", MODEL)
        demo.run("history", MODEL)
        demo.run("history", MODEL, "--plot", str(plot))
    print(f"\ndemo done in {time.monotonic() - started:.0f}s; the rollout's picture: {plot}")


if __name__ == "__main__":
    main()
