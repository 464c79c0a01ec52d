"""Where ``publish`` spends its time: runs ``repo-manager publish --verbose`` and shows it.

Starts a fresh embedded Triton, then publishes the detector as version 1 (stable) and
version 2 (canary) of one model per ``--imgsz`` through the CLI in a subprocess (this
checkout's code), printing the phase lines it writes on stderr (export, upload,
load + warm-up, routing table; gate with ``--golden``) and its one-line summary.

    python bench/publish_phases.py [--imgsz 320 640] [--golden DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

from bench.common import bench_stack, detector_weights, load_now, machine  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--golden", type=Path, default=None, help="gate version 2 on this set")
    parser.add_argument("--quick", action="store_true", help="one small model: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.imgsz = [160]
    print(machine())
    weights = detector_weights(args.weights)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp,
        bench_stack(Path(tmp)) as stack,
    ):
        for imgsz in args.imgsz:
            model = f"yolo{imgsz}"
            for version in ("1", "2"):
                gate = ["--golden", str(args.golden)] if args.golden and version == "2" else []
                command = [
                    sys.executable, "-m", "repo_manager.cli",
                    "--repository", str(stack.repository), "--url", stack.url,
                    "publish", model, version, "--weights", str(weights),
                    "--imgsz", str(imgsz), "--verbose", *gate,
                ]  # fmt: skip
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - started
                print(f"\n[6] publish {model} {version} (imgsz {imgsz}); {load_now()}")
                phases = [line for line in done.stderr.splitlines() if " done in " in line]
                summary = [line for line in done.stderr.splitlines() if "timings:" in line]
                for line in phases + summary:
                    print(f"  {line}")
                print(f"  stdout: {done.stdout.strip()}  (exit {done.returncode})")
                print(f"  wall time of the command, interpreter start included: {wall:.2f} s")


if __name__ == "__main__":
    main()
