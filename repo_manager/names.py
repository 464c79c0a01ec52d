"""Names: models, versions, and the two Triton models behind one published name.

A published model ``yolov8s`` is two Triton models. The **public name** ``yolov8s`` is an
ensemble whose single step pins the stable version: what every client that is not our
Router calls (C++, DeepStream, curl, Ultralytics' own client), so a request that names no
version is answered by stable only (Triton sends an unpinned request to the highest READY
version, which during a canary is the canary). The **versions model** ``yolov8s.versions``
holds the version folders; the Router calls it, always pinned.

The suffix is reserved: a public name that ends with it is refused, so the mapping
public -> versions model is one-to-one and needs no lookup (a Router derives it).
"""

from __future__ import annotations

import re

from repo_manager.errors import InvalidNameError, InvalidVersionError

__all__ = [
    "BYTECODE_FOLDER",
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "VERSIONS_SUFFIX",
    "is_versions_model",
    "validate_model_name",
    "validate_version",
    "versions_model_name",
]

CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "manifest.json"
#: A plain, empty *file* where the python backend's stub would create its bytecode folder
#: (``repository.block_bytecode``); the only file of a version its manifest does not name.
BYTECODE_FOLDER = "__pycache__"
#: Appended to the public name to name the model holding the version folders. A dot is
#: valid in Triton model names, S3 keys and Prometheus label values alike.
VERSIONS_SUFFIX = ".versions"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,118}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")


def validate_model_name(name: str) -> str:
    """A public model name: one safe path segment Triton accepts, not a versions model's."""
    if not name:
        raise InvalidNameError("model name is empty")
    if not _MODEL_NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' "
            "(no '/', '..' or spaces; must start with a letter or digit; at most 119 characters)"
        )
    if name.endswith(VERSIONS_SUFFIX):
        raise InvalidNameError(
            f"invalid model name {name!r}: names ending in {VERSIONS_SUFFIX!r} are reserved "
            "for the model that holds a published model's versions"
        )
    return name


def validate_version(version: str | int) -> str:
    """Versions are positive integers written plainly (Triton names folders so)."""
    text = str(version).strip()
    if not _VERSION.match(text):
        raise InvalidVersionError(f"invalid version {str(version)!r}: must be a positive integer")
    return text


def is_version_folder(name: str) -> bool:
    return bool(_VERSION.match(name))


def versions_model_name(model: str) -> str:
    """The Triton model that holds ``model``'s version folders (what the Router calls)."""
    return f"{model}{VERSIONS_SUFFIX}"


def is_versions_model(name: str) -> bool:
    return name.endswith(VERSIONS_SUFFIX)
