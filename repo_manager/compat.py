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

from collections.abc import Mapping
from typing import Any

from repo_manager.errors import IncompatibleModelError

__all__ = ["TRITON_TENSORRT", "check_plan_compatible", "tensorrt_for_triton"]

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
