"""Every bench script still runs (``--quick``): a smoke test, never a timed assert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
#: Scripts that publish real detectors (or start a fleet on S3) take 30-90 s in --quick mode.
SLOW = {"serving", "warmup", "publish_phases", "memory", "propagation --fleet", "contracts"}


@pytest.mark.parametrize(
    "script",
    [
        "router_overhead",
        "propagation",
        "propagation --fleet",
        "watch_transport",
        "serving",
        "warmup",
        "publish_phases",
        "memory",
        "contracts",
    ],
)
def test_bench_script_runs_in_quick_mode_and_prints_its_goal(script: str) -> None:
    name, *options = script.split()
    if script in SLOW and os.environ.get("REPO_MANAGER_BENCH_SMOKE") != "1":
        pytest.skip(
            f"`python bench/{name}.py {' '.join([*options, '--quick'])}` publishes detectors "
            "or starts a fleet (slow): set REPO_MANAGER_BENCH_SMOKE=1 to run it"
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *options, "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "machine:" in done.stdout and "load average" in done.stdout
    if name not in {"publish_phases", "watch_transport"}:  # these two set no goal
        assert "goal" in done.stdout
