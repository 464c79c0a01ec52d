"""Version folders as a publish leaves them (files, their manifest, the config and its
seal), for unit tests whose manager must pass the integrity check without an export."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from repo_manager.integrity import ConfigSeal, config_digest
from repo_manager.modelconfig import ModelConfig, render_config
from repo_manager.names import CONFIG_FILE, MANIFEST_FILE, versions_model_name
from repo_manager.storage import LocalStorage


def write_version(
    folder: Path, model: str, version: str, files: dict[str, bytes] | None = None
) -> Path:
    """A version ``folder`` of ``model`` with ``files`` (a small model.py by default) and
    the manifest that names their sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    files = files or {"model.py": f"VERSION = {version}\n".encode()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {
        "model": model,
        "version": version,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def write_published(
    root: Path, model: str, versions: Iterable[str], config: ModelConfig | None = None
) -> ModelConfig:
    """The versions model of ``model`` with ``versions``, its config and the config's seal."""
    config = config or ModelConfig(name=versions_model_name(model))
    for version in versions:
        write_version(root / versions_model_name(model) / version, model, version)
    (root / versions_model_name(model) / CONFIG_FILE).write_bytes(render_config(config))
    ConfigSeal(LocalStorage(root)).write(model, [config_digest(config)])
    return config
