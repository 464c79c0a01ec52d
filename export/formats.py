"""The serving formats an export can produce, and what each changes in the output.

Everything else (ONNX export, checks, config, manifest, staging) is shared: a format only
picks the backend or platform, the instance kind, the files of its version folder and
whether it needs a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from repo_manager.errors import InvalidInputError

__all__ = ["FORMATS", "FormatSpec", "get_format"]


@dataclass(kw_only=True, frozen=True)
class FormatSpec:
    """One serving format (``--format`` value)."""

    name: str
    backend_or_platform: str
    instance_kind: str
    files: tuple[str, ...]  # the version folder's artifacts, manifest aside
    needs_gpu: bool = False


FORMATS: dict[str, FormatSpec] = {
    # ONNX run by onnxruntime inside Triton's python backend (our embedded CPU server).
    "python": FormatSpec(
        name="python",
        backend_or_platform="python",
        instance_kind="KIND_CPU",
        files=("model.onnx", "model.py"),
    ),
    # ONNX run by Triton's own onnxruntime backend.
    "onnx": FormatSpec(
        name="onnx",
        backend_or_platform="onnxruntime_onnx",
        instance_kind="KIND_CPU",
        files=("model.onnx",),
    ),
    # A TensorRT engine built from the ONNX on the GPU that will serve it, one file per
    # compute capability (model.sm89.plan, ...; see export/plans.py).
    "plan": FormatSpec(
        name="plan",
        backend_or_platform="tensorrt_plan",
        instance_kind="KIND_GPU",
        files=(),
        needs_gpu=True,
    ),
}


def get_format(name: str) -> FormatSpec:
    """The format called ``name``; an unknown name is bad input."""
    try:
        return FORMATS[name]
    except KeyError:
        choices = ", ".join(sorted(FORMATS))
        raise InvalidInputError(f"unknown export format {name!r} (choose {choices})") from None
