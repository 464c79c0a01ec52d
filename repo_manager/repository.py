"""The Triton model repository's layout: models, immutable versions, configs, manifests.

    <repository>/
      .repo-manager.<model>.json      rollout state (a root *file*: Triton ignores it)
      <model>/config.pbtxt            the model's config (IO, warm-up, version policy)
      <model>/<version>/              one immutable version: model.onnx, model.py, manifest.json

Versions appear whole: a version folder is staged beside its target and renamed (in S3,
staged, checksum-verified and copied with the manifest last: a version without its
manifest is not a version; see ``storage.s3``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

from repo_manager.errors import (
    IncompatibleModelError,
    InvalidNameError,
    InvalidVersionError,
    StorageError,
    VersionExistsError,
)
from repo_manager.modelconfig import io_signature, parse_config, render_config
from repo_manager.storage import Storage

__all__ = ["ModelRepository", "validate_model_name", "validate_version"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "manifest.json"


def validate_model_name(name: str) -> str:
    """A model name must be one safe path segment Triton accepts."""
    if not name:
        raise InvalidNameError("model name is empty")
    if not _MODEL_NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' "
            "(no '/', '..' or spaces; must start with a letter or digit)"
        )
    return name


def validate_version(version: str | int) -> str:
    """Versions are positive integers written plainly (Triton names folders so)."""
    text = str(version).strip()
    if not _VERSION.match(text):
        raise InvalidVersionError(f"invalid version {str(version)!r}: must be a positive integer")
    return text


class ModelRepository:
    """Typed access to one repository through its storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @property
    def location(self) -> str:
        return self.storage.location

    def models(self) -> list[str]:
        """Models: root folders holding a config.pbtxt."""
        return [
            name
            for name in self.storage.list_dir("")
            if not name.startswith(".") and self.storage.exists(f"{name}/{CONFIG_FILE}")
        ]

    def versions(self, model: str) -> list[str]:
        """Versions on disk, ascending."""
        names = [n for n in self.storage.list_dir(model) if _VERSION.match(n)]
        return sorted(names, key=int)

    def has_version(self, model: str, version: str) -> bool:
        return self.storage.exists(f"{model}/{version}")

    def require_new_version(self, model: str, version: str) -> None:
        if self.has_version(model, version):
            raise VersionExistsError(
                f"{model} version {version} already exists in {self.location}; "
                "versions are immutable, publish a new number"
            )

    def config(self, model: str) -> model_config_pb2.ModelConfig | None:
        key = f"{model}/{CONFIG_FILE}"
        data = self.storage.read_bytes(key)
        if data is None:
            return None
        return parse_config(data, source=f"{self.location}/{key}")

    def require_config(self, model: str) -> model_config_pb2.ModelConfig:
        config = self.config(model)
        if config is None:
            raise StorageError(f"{model} has no {CONFIG_FILE} in {self.location}")
        return config

    def write_config(self, model: str, config: model_config_pb2.ModelConfig) -> None:
        self.storage.write_bytes_atomic(f"{model}/{CONFIG_FILE}", render_config(config))

    def manifest(self, model: str, version: str) -> dict[str, Any] | None:
        data = self.storage.read_bytes(f"{model}/{version}/{MANIFEST_FILE}")
        if data is None:
            return None
        try:
            manifest: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise StorageError(f"corrupt manifest of {model} version {version}") from exc
        return manifest

    def check_compatible(self, model: str, candidate: model_config_pb2.ModelConfig) -> None:
        """A new version must match the model's inputs/outputs: one config serves all."""
        current = self.config(model)
        if current is None:
            return
        if io_signature(current) != io_signature(candidate):
            raise IncompatibleModelError(
                f"the new version's inputs/outputs differ from {model}'s config "
                f"({io_signature(candidate)} vs {io_signature(current)}); "
                "publish it under a new model name"
            )

    def add_version(
        self,
        model: str,
        version: str,
        staged_model_dir: Path,
        progress: Callable[[str], None] | None = None,
    ) -> bool:
        """Move a staged version (and, for a new model, its config) into place.

        Returns True when this created the model. A new model's folder appears whole,
        config included; a later version's folder appears whole beside the others.
        """
        staged_version = staged_model_dir / version
        if not staged_version.is_dir():
            raise StorageError(f"staged export has no version folder {staged_version}")
        if not self.storage.exists(model):
            self.storage.publish_dir(staged_model_dir, model, progress)
            return True
        self.storage.publish_dir(staged_version, f"{model}/{version}", progress)
        return False

    def remove_version(self, model: str, version: str, *, created_model: bool) -> None:
        """Undo ``add_version`` (used when Triton refuses the new version)."""
        self.storage.remove_tree(model if created_model else f"{model}/{version}")
