"""``manifest.json``: what a version folder holds and how it was made.

Versions are immutable, so the manifest pins them: the sha256 of every artifact (checked
again before publishing or after a copy), the sha256 of the source weights (which
weights a version came from, without keeping them), the interface (imgsz, class names,
inputs/outputs) and the tool versions that produced it (a TensorRT plan adds its
TensorRT version and GPU through ``extra``).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from export.weights import sha256_file
from repo_manager.modelconfig import TensorSpec
from repo_manager.names import MANIFEST_FILE

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA",
    "build_manifest",
    "file_digests",
    "manifest_mismatches",
    "read_checked_manifest",
    "tool_versions",
    "write_manifest",
]

MANIFEST_SCHEMA = 1
_TOOLS = ("ultralytics", "torch", "onnx", "onnxruntime", "numpy")
# Written by Triton's python backend into version folders at load time: not artifacts.
_IGNORED_PARTS = frozenset({"__pycache__"})


def _is_artifact(relative: Path) -> bool:
    return (
        relative.name != MANIFEST_FILE
        and not _IGNORED_PARTS.intersection(relative.parts)
        and relative.suffix != ".pyc"
    )


def file_digests(version_dir: Path) -> dict[str, str]:
    """sha256 of every artifact under ``version_dir``, keyed by relative POSIX path."""
    digests = {}
    for path in sorted(version_dir.rglob("*")):
        relative = path.relative_to(version_dir)
        if path.is_file() and _is_artifact(relative):
            digests[relative.as_posix()] = sha256_file(path)
    return digests


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape the artifacts (and of repo-manager itself)."""
    versions = {"python": platform.python_version()}
    versions.update({name: _package_version(name) for name in _TOOLS})
    own = _package_version("repo-manager")
    if own == "not installed":  # running from a source tree
        import repo_manager

        own = str(getattr(repo_manager, "__version__", "unknown"))
    versions["repo-manager"] = own
    return versions


def build_manifest(
    *,
    version_dir: Path,
    model_name: str,
    version: str,
    format: str,
    source_weights: Path,
    weights_sha256: str,
    imgsz: int,
    class_names: Sequence[str],
    max_batch_size: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a finished version folder (hashes are taken now)."""
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "model": model_name,
        "version": version,
        "format": format,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_weights": {"name": source_weights.name, "sha256": weights_sha256},
        "imgsz": imgsz,
        "class_names": list(class_names),
        "max_batch_size": max_batch_size,
        "inputs": [_spec_dict(s) for s in inputs],
        "outputs": [_spec_dict(s) for s in outputs],
        "files": file_digests(version_dir),
        "tools": tool_versions(),
    }
    manifest.update(extra or {})
    return manifest


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["dims"] = list(spec.dims)
    return data


def write_manifest(version_dir: Path, manifest: Mapping[str, Any]) -> Path:
    path = version_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def manifest_mismatches(version_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    """What differs between a version folder and its manifest (empty: intact).

    Returned rather than raised: the caller knows whether a mismatch is an export
    failure or a damaged repository.
    """
    recorded = dict(manifest.get("files", {}))
    actual = file_digests(version_dir)
    problems = [f"{name}: missing" for name in sorted(recorded.keys() - actual.keys())]
    problems += [f"{name}: not in the manifest" for name in sorted(actual.keys() - recorded.keys())]
    problems += [
        f"{name}: sha256 differs"
        for name in sorted(recorded.keys() & actual.keys())
        if recorded[name] != actual[name]
    ]
    return problems


def read_checked_manifest(version_dir: Path) -> dict[str, Any]:
    """The manifest of an exported version folder, refused unless the folder matches it."""
    from repo_manager.errors import InvalidInputError

    try:
        manifest: dict[str, Any] = json.loads(
            (version_dir / MANIFEST_FILE).read_text(encoding="utf-8")
        )
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{version_dir} has no readable {MANIFEST_FILE}: {exc}") from exc
    problems = manifest_mismatches(version_dir, manifest)
    if problems:
        raise InvalidInputError(f"{version_dir} differs from its manifest: {'; '.join(problems)}")
    return manifest
