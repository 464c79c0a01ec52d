"""Will a TensorRT plan load on this Triton? Releases mapped to their TensorRT versions.

A plan only deserializes on the TensorRT version it was built with. Triton reports its
own version in its server metadata (e.g. ``2.51.0``), not TensorRT's, so this table maps
Triton releases (NGC container ``YY.MM``) to the TensorRT they ship, from NVIDIA's
Frameworks Support Matrix (the ``-py3`` images; the ``-trtllm-python-py3`` images pin
their own TensorRT and lag by up to one minor, e.g. 24.10 ships 10.4.0 there). Every entry
is TensorRT 10, the only major ``export.tensorrt`` builds for. Extend it when the compose
stack moves to a newer release.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from repo_manager.contract import RAW, contract_of
from repo_manager.errors import IncompatibleModelError
from repo_manager.modelconfig import ModelConfig, io_signature

__all__ = ["TRITON_TENSORRT", "check_plan_compatible", "io_difference", "tensorrt_for_triton"]

#: Triton server version -> (NGC release, TensorRT major.minor.patch it ships).
TRITON_TENSORRT: dict[str, tuple[str, str]] = {
    "2.46.0": ("24.05", "10.0.1"),
    "2.47.0": ("24.06", "10.1.0"),
    "2.48.0": ("24.07", "10.2.0"),
    "2.49.0": ("24.08", "10.3.0"),
    "2.50.0": ("24.09", "10.4.0"),
    "2.51.0": ("24.10", "10.5.0"),
    "2.52.0": ("24.11", "10.6.0"),
    "2.53.0": ("24.12", "10.7.0"),
    "2.54.0": ("25.01", "10.8.0"),
    "2.55.0": ("25.02", "10.8.0"),
    "2.56.0": ("25.03", "10.9.0"),
    "2.57.0": ("25.04", "10.9.0"),
    "2.58.0": ("25.05", "10.10.0"),
    "2.59.0": ("25.06", "10.11.0"),
}


def _release(version: str) -> str:
    """TensorRT versions compare on major.minor.patch (the build number does not matter)."""
    return ".".join(version.split(".")[:3])


def tensorrt_for_triton(triton_version: str) -> str | None:
    entry = TRITON_TENSORRT.get(_release(triton_version))
    return entry[1] if entry else None


def check_plan_compatible(
    manifest: Mapping[str, Any], servers: Mapping[str, str], *, force: bool = False
) -> None:
    """Refuse a plan whose TensorRT differs from any server's (``servers``: url -> version)."""
    if manifest.get("format") != "plan" or force:
        return
    built = _release(str(manifest.get("tensorrt", "")))
    for url, triton_version in servers.items():
        expected = tensorrt_for_triton(triton_version)
        if expected is None:
            raise IncompatibleModelError(
                f"Triton {triton_version} at {url} is not in the TensorRT compatibility table; "
                "cannot tell whether the plan loads (use --force to publish anyway)"
            )
        if expected != built:
            release = TRITON_TENSORRT[_release(triton_version)][0]
            raise IncompatibleModelError(
                f"plan built with TensorRT {built or 'unknown'} will not load on Triton "
                f"{triton_version} ({release}, TensorRT {expected}) at {url}; build it in the "
                f"TensorRT {release} image (or use --force)"
            )


def _served_imgsz(config: ModelConfig) -> str | None:
    if "imgsz" in config.parameters:
        return config.parameters["imgsz"].string_value
    return None


def _class_count(config: ModelConfig) -> int | None:
    if "class_names" not in config.parameters:
        return None
    try:
        return len(json.loads(config.parameters["class_names"].string_value))
    except ValueError:
        return None


def _tensor_words(role: str, tensor: tuple[str, str, tuple[int, ...]] | None) -> str:
    if tensor is None:
        return f"no {role}"
    name, dtype, dims = tensor
    return f"{role} {name} {dtype.removeprefix('TYPE_')} {list(dims)}"


def io_difference(candidate: ModelConfig, current: ModelConfig) -> str:
    """How a new version's inputs/outputs differ from what a model serves, in words
    (``imgsz 640, the model serves 160``); empty when they do not differ.

    Contract, image size, batch bound and class count explain most differences (the
    tensors' dims follow from them); only when none of them differs are the tensors named
    one by one.
    """
    if io_signature(candidate) == io_signature(current):
        return ""
    words = []
    new_contract, old_contract = contract_of(candidate), contract_of(current)
    if new_contract != old_contract:
        words.append(f"contract {new_contract}, the model serves {old_contract}")
    if candidate.max_batch_size != current.max_batch_size:
        words.append(
            f"max batch {candidate.max_batch_size}, the model serves {current.max_batch_size}"
        )
    new_size, old_size = _served_imgsz(candidate), _served_imgsz(current)
    if new_size and old_size and new_size != old_size:
        words.append(f"imgsz {new_size}, the model serves {old_size}")
    new_classes, old_classes = _class_count(candidate), _class_count(current)
    if new_classes is not None and old_classes is not None and new_classes != old_classes:
        grows = " (the raw contract's output grows with the class count; end2end's does not)"
        words.append(
            f"{new_classes} classes, the model serves {old_classes}"
            + (grows if old_contract == RAW and new_contract == RAW else "")
        )
    if words:
        return "; ".join(words)
    _, new_in, new_out = io_signature(candidate)
    _, old_in, old_out = io_signature(current)
    for role, new, old in (("input", new_in, old_in), ("output", new_out, old_out)):
        names = sorted({t[0] for t in new} | {t[0] for t in old})
        for name in names:
            a = next((t for t in new if t[0] == name), None)
            b = next((t for t in old if t[0] == name), None)
            if a != b:
                words.append(f"{_tensor_words(role, a)}, the model serves {_tensor_words(role, b)}")
    return "; ".join(words)
