from __future__ import annotations

import os

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
