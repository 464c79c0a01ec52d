"""``make demo``: the whole rollout on the embedded Triton, offline, on a CPU.

Starts an embedded tritonserver on free ports over a fresh demo repository, then runs the
real CLI: publish v1 (stable), publish v2 (10% canary), a few hundred ``Router.detect``
requests on generated shapes images (split per version printed), the same images from a
plain tritonclient that names no version (answered by stable only: Triton's own per-version
counts printed), promote, status.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
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


def run(repository: Path, url: str, *args: str) -> str:
    command = ["repo-manager", "--repository", str(repository), "--url", url, *args]
    print(f"\n$ {' '.join(command)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "repo_manager.cli", *command[1:]],
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(done.stderr)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo step failed: {' '.join(args)}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, required=True, help="Ultralytics detector .pt")
    parser.add_argument("--repository", type=Path, default=Path(".cache/demo/model_repository"))
    parser.add_argument("--imgsz", default="160")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    shutil.rmtree(args.repository, ignore_errors=True)
    args.repository.mkdir(parents=True)
    log = args.repository.parent / "tritonserver.log"
    server = EmbeddedTriton(args.repository, ports=ServerPorts.free(), log_path=log)
    print(f"starting embedded tritonserver on {args.repository} (log: {log})", flush=True)
    with server:
        url = server.grpc_url
        export = ("--weights", str(args.weights), "--imgsz", args.imgsz, "--max-batch", "4")
        run(args.repository, url, "publish", "yolov8n", "1", *export)
        run(args.repository, url, "publish", "yolov8n", "2", *export, "--canary-weight", "10")

        rng = np.random.default_rng(0)
        counts: Counter[str] = Counter()
        found = drawn = 0
        start = time.perf_counter()
        with Router("yolov8n", url=url, repository=str(args.repository)) as router:
            for _ in range(args.requests):
                sample = generate_shapes_image(imgsz=int(args.imgsz), rng=rng)
                detections = router.detect(sample.image)
                counts[detections.version] += 1
                found += len(detections.scores)
                drawn += len(sample.classes)
        elapsed = time.perf_counter() - start
        print(
            f"\n{args.requests} Router.detect requests in {elapsed:.1f}s: "
            f"{found} objects detected, {drawn} drawn"
        )
        for version, count in sorted(counts.items()):
            print(f"  version {version}: {count:4d} requests ({100 * count / args.requests:.1f}%)")

        unpinned_client(url, "yolov8n", int(args.imgsz), requests=100)

        run(args.repository, url, "promote", "yolov8n")
        run(args.repository, url, "status", "yolov8n")


def unpinned_client(url: str, model: str, imgsz: int, *, requests: int) -> None:
    """A client that is not our Router (no version named) calls the public name."""
    versions = versions_model_name(model)
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
            client.infer(model, [images])
        after = counts()
    served = {v: after.get(v, 0) - before.get(v, 0) for v in sorted(after, key=int)}
    print(
        f"\n{requests} requests from a plain tritonclient naming no version, to {model!r}: "
        "Triton's own counts per version of "
        f"{versions!r}: " + ", ".join(f"v{v} {n}" for v, n in served.items())
    )


if __name__ == "__main__":
    main()
