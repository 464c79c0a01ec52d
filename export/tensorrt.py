"""The TensorRT boundary: everything ``--format plan`` needs beyond the shared ONNX export.

A plan only loads on the TensorRT version and GPU it was built for, so it must be built
on a GPU machine with TensorRT; on any other machine the export stops at once with one
line rather than after the ONNX work. Building the engine itself (TensorRT builder API
from ``model.onnx``, an optimization profile covering ``max_batch_size``) comes later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repo_manager.errors import ExportError

__all__ = ["build_plan", "require_tensorrt"]


def require_tensorrt() -> dict[str, Any]:
    """TensorRT version and GPU of this machine, or ``ExportError`` when either is missing."""
    import torch

    if not torch.cuda.is_available():
        raise ExportError(
            "--format plan needs an NVIDIA GPU with TensorRT; this machine has no GPU"
        )
    try:
        import tensorrt
    except ImportError as exc:
        raise ExportError(
            "--format plan needs TensorRT; the 'tensorrt' package is not installed "
            "(pip install 'repo-manager[trt]')"
        ) from exc
    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt": str(tensorrt.__version__),
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
    }


def build_plan(
    onnx_path: Path, plan_path: Path, *, imgsz: int, max_batch: int, fp16: bool, int8: bool
) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path``; returns manifest fields. Not built yet."""
    raise ExportError("building TensorRT plans is not implemented yet; use --format python|onnx")
