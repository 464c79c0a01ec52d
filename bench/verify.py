"""What verifying a version costs a reconcile pass: a 100 MB plan, on a folder and on S3.

Every load and every move checks the versions it serves against their manifests
(``repo_manager.integrity``). The first check of a file reads it whole (sha256); later
checks of an unchanged file cost a stat on a folder, a share of one listing on S3
(``DigestCache``). Printed side by side in one run: the first check, the median of the
checks after it (alternating the two storages), the ratio, and one check after the plan
changed (read again: it must be, or a change could hide).

Goal: a check of an unchanged 100 MB version costs under 1% of hashing it, and under
20 ms on a folder.

    python bench/verify.py [--size-mb 100] [--rounds 30] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

from bench.common import load_now, machine  # noqa: E402
from repo_manager.integrity import Verifier  # noqa: E402
from repo_manager.storage import LocalStorage, Storage  # noqa: E402

MODEL = "big"


def write_version(root: Path, size: int) -> None:
    folder = root / f"{MODEL}.versions" / "1"
    folder.mkdir(parents=True)
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(folder / "model.plan", "wb") as handle:
        for _ in range(size):
            handle.write(block)
            digest.update(block)
    files = {"model.plan": digest.hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"model": MODEL, "files": files}))


def timed(check: Callable[[], str | None]) -> float:
    started = time.perf_counter()
    found = check()
    assert found is None, found
    return time.perf_counter() - started


def s3_copy(root: Path, endpoint: str) -> Storage:
    import boto3

    from repo_manager.storage.s3 import S3Storage

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="verify")
    storage = S3Storage("s3://verify/repo", endpoint_url=endpoint)
    storage.publish_dir(root / f"{MODEL}.versions", f"{MODEL}.versions")
    return storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="20 MB, 10 rounds")
    args = parser.parse_args(argv)
    size, rounds = (20, 10) if args.quick else (args.size_mb, args.rounds)
    print(machine())
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        root = Path(tmp)
        write_version(root, size)
        from repo_manager.server import free_port

        port = free_port()
        moto = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    s3 = s3_copy(root, endpoint)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            report(root, s3, size, rounds)
        finally:
            moto.terminate()
            moto.wait(timeout=30)
    print(load_now())
    return 0


def report(root: Path, s3: Storage, size: int, rounds: int) -> None:
    sides = {"folder": Verifier(LocalStorage(root)), "S3 (moto)": Verifier(s3)}
    first = {name: timed(lambda v=v: v.problem(MODEL, "1")) for name, v in sides.items()}
    warm: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):  # alternating: both sides see the same load
        for name, verifier in sides.items():
            warm[name].append(timed(lambda v=verifier: v.problem(MODEL, "1")))
    plan = root / f"{MODEL}.versions" / "1" / "model.plan"
    os.utime(plan)  # a change of the file's times: read again
    changed = timed(lambda: sides["folder"].problem(MODEL, "1"))
    for name in sides:
        median = statistics.median(warm[name])
        print(
            f"{name:10s} {size} MB version: first check {first[name] * 1000:8.1f} ms "
            f"(reads and hashes it), unchanged {median * 1000:7.2f} ms median of {rounds} "
            f"(ratio {median / first[name]:.4f}), files hashed "
            f"{sides[name].cache.counts.hashed}"
        )
    print(f"folder     after the plan's times changed: {changed * 1000:.1f} ms (read again)")
    ratio = statistics.median(warm["folder"]) / first["folder"]
    fast = statistics.median(warm["folder"]) < 0.020
    print(
        f"goal: an unchanged version under 1% of hashing it and under 20 ms on a folder: "
        f"{'met' if ratio < 0.01 and fast else 'NOT met'}"
    )


if __name__ == "__main__":
    sys.exit(main())
