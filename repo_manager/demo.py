"""``make demo``: the whole rollout on the embedded Triton, offline, on a CPU.

Starts an embedded tritonserver on free ports over a fresh demo repository, then runs the
real CLI: publish v1 (stable), publish v2 (10% canary), a few hundred ``Router.detect``
requests on generated shapes images (split per version printed), promote, status.
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

from export.shapes import generate_shapes_image
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

        run(args.repository, url, "promote", "yolov8n")
        run(args.repository, url, "status", "yolov8n")


if __name__ == "__main__":
    main()
