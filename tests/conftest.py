from __future__ import annotations

import os
from collections import Counter

import pytest

# Ultralytics must never reach for the network here (no internet on CI machines).
os.environ.setdefault("YOLO_OFFLINE", "1")


def _gpu_unavailable_reason() -> str | None:
    """Why `gpu` tests cannot run here (None: they can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (run `make test` on an NVIDIA GPU machine)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'repo-manager[trt]')"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests with the reason, only where no GPU with TensorRT exists."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    reason = _gpu_unavailable_reason() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))


def skipped_summary(reasons: list[str]) -> list[str]:
    """The lines ``make test`` ends with: each reason tests were skipped for, how many, and
    (in the reason itself) how to get what they need."""
    if not reasons:
        return []
    counted = Counter(reasons)
    lines = [f"{len(reasons)} tests skipped; to run them:"]
    lines += [f"  {count:3d} x {reason}" for reason, count in sorted(counted.items())]
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say at the very end which tests were skipped and how to run them."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons.append(text.removeprefix("Skipped: "))
    lines = skipped_summary(reasons)
    if lines:
        terminalreporter.section("skipped tests", sep="-")
        for line in lines:
            terminalreporter.write_line(line)
