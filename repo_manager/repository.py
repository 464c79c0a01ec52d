"""The Triton model repository's layout: models, immutable versions, configs, manifests.

    <repository>/
      .repo-manager.<model>.json               rollout state (a root *file*: Triton ignores it)
      <model>/config.pbtxt                     the public name: an ensemble pinning stable
      <model>/1/README                         (an ensemble needs one version folder)
      <model>.versions/config.pbtxt            the versions model's config (IO, warm-up, policy)
      <model>.versions/<version>/              one immutable version: model.onnx, model.py,
                                               manifest.json, __pycache__ (see below)

Why two models: see ``repo_manager.names``.

Versions appear whole: a version folder is staged beside its target and renamed (in S3,
staged, checksum-verified and copied with the manifest last: a version without its
manifest is not a version; see ``storage.s3``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

from repo_manager.compat import io_difference
from repo_manager.errors import (
    IncompatibleModelError,
    IntegrityError,
    InvalidInputError,
    StorageError,
    VersionExistsError,
)
from repo_manager.integrity import (
    SIGNATURE_FIELD,
    ConfigSeal,
    SigningKey,
    Verifier,
    config_digest,
    sign_manifest,
)
from repo_manager.modelconfig import alias_target, parse_config, render_config
from repo_manager.names import (
    BYTECODE_FOLDER,
    CONFIG_FILE,
    MANIFEST_FILE,
    is_version_folder,
    is_versions_model,
    validate_model_name,
    validate_version,
    versions_model_name,
)
from repo_manager.storage import Storage

__all__ = [
    "ModelRepository",
    "block_bytecode",
    "serving_kind",
    "validate_model_name",
    "validate_version",
]

ALIAS_VERSION = "1"
ALIAS_README = (
    "The public name of this model: an ensemble whose one step pins the stable version of\n"
    "the versions model (config.pbtxt). Triton needs one version folder; this is it.\n"
)


def serving_kind(config: model_config_pb2.ModelConfig) -> str:
    """What serves a config's versions, as Triton picks it: backend and/or platform."""
    parts = [
        f"backend {config.backend!r}" if config.backend else "",
        f"platform {config.platform!r}" if config.platform else "",
    ]
    return " and ".join(p for p in parts if p) or "no backend or platform"


def block_bytecode(version_dir: Path) -> None:
    """Keep Triton from re-initializing a loaded version when another one is loaded.

    Triton 2.51 keeps a READY version on a load call only if nothing under its folder is
    newer than at its last load. The python backend's stub imports ``V/model.py`` after
    Triton took those times, and Python then writes ``V/__pycache__/``: the next load call
    (a canary added, a promote) re-initializes every loaded version, a second copy of
    stable in memory while it warms up (measured: the stub's PID changes). A regular file
    named ``__pycache__`` makes every CPython's import machinery skip the write (its
    ``mkdir`` fails and bytecode caching is best effort), whatever interpreter runs the
    stub and whatever user it runs as (read-only folders do not stop root).
    """
    if not (version_dir / "model.py").is_file():
        return
    guard = version_dir / BYTECODE_FOLDER
    if guard.is_dir():
        for stale in guard.iterdir():
            stale.unlink()
        guard.rmdir()
    if not guard.exists():
        guard.write_bytes(b"")


class ModelRepository:
    """Typed access to one repository through its storage."""

    def __init__(self, storage: Storage, *, signing_key: SigningKey | None = None) -> None:
        self.storage = storage
        self.signing_key = signing_key
        self.seals = ConfigSeal(storage, signing_key)

    @property
    def location(self) -> str:
        return self.storage.location

    def models(self) -> list[str]:
        """Published models (public names): root folders holding a config.pbtxt."""
        return [
            name
            for name in self.storage.list_dir("")
            if not name.startswith(".")
            and not is_versions_model(name)
            and self.storage.exists(f"{name}/{CONFIG_FILE}")
        ]

    def versions(self, model: str) -> list[str]:
        """Versions on disk, ascending."""
        names = [
            n for n in self.storage.list_dir(versions_model_name(model)) if is_version_folder(n)
        ]
        return sorted(names, key=int)

    def has_versions_model(self, model: str) -> bool:
        """True once the model's versions folder exists (its first version was added)."""
        return self.storage.exists(versions_model_name(model))

    def has_version(self, model: str, version: str) -> bool:
        return self.storage.exists(f"{versions_model_name(model)}/{version}")

    def require_new_version(self, model: str, version: str) -> None:
        if self.has_version(model, version):
            raise VersionExistsError(
                f"{model} version {version} already exists in {self.location}; "
                "versions are immutable, publish a new number"
            )

    def _read_config(self, folder: str) -> model_config_pb2.ModelConfig | None:
        key = f"{folder}/{CONFIG_FILE}"
        data = self.storage.read_bytes(key)
        if data is None:
            return None
        return parse_config(data, source=f"{self.location}/{key}")

    def config(self, model: str) -> model_config_pb2.ModelConfig | None:
        """The versions model's config (what every version is served with)."""
        config = self._read_config(versions_model_name(model))
        if config is None:
            self._refuse_old_layout(model)
        return config

    def _refuse_old_layout(self, model: str) -> None:
        """A model published before the public name became an alias holds its versions in
        its own folder; serving it as an alias would hide them. Say so instead."""
        legacy = self._read_config(model)
        if legacy is not None and alias_target(legacy) is None:
            raise StorageError(
                f"{self.location}/{model} holds its versions in the model folder (the layout "
                f"before the public name became a stable alias); move {model}/ to "
                f"{versions_model_name(model)}/, set its config's name to "
                f"{versions_model_name(model)!r}, and run reconcile"
            )

    def require_config(self, model: str) -> model_config_pb2.ModelConfig:
        config = self.config(model)
        if config is None:
            raise StorageError(
                f"{model} has no {versions_model_name(model)}/{CONFIG_FILE} in {self.location}"
            )
        return config

    def write_config(self, model: str, config: model_config_pb2.ModelConfig) -> None:
        """Replace the versions model's config, and its seal when more than the version
        policy changed (the old and new digests accepted while the config is written)."""
        folder = versions_model_name(model)
        current = self.config(model)
        old, new = (None if current is None else config_digest(current)), config_digest(config)
        if old != new:
            self.seals.write(model, [new] if old is None else [new, old])
        self.storage.write_bytes_atomic(f"{folder}/{CONFIG_FILE}", render_config(config))
        if old != new:
            self.seals.write(model, [new])

    def sign_published(self, model: str) -> list[str]:
        """Sign what a repository holds from before the signing key was set: every version
        whose files match its manifest, and the config when it matches its seal (or has
        none). Refused, naming the file, when anything does not. Returns what was signed.
        A version whose manifest is rewritten is re-initialized by its next load."""
        if self.signing_key is None:
            raise InvalidInputError("sign needs --signing-key (the key to sign with)")
        unsigned = ModelRepository(self.storage)
        config = self.require_config(model)
        problem = unsigned.config_problem(model, config)
        checker = Verifier(self.storage)
        problems = [problem] + [checker.problem(model, v) for v in self.versions(model)]
        if any(problems):
            raise IntegrityError(f"{model} not signed: {next(p for p in problems if p)}")
        signed = []
        for version in self.versions(model):
            key = f"{versions_model_name(model)}/{version}/{MANIFEST_FILE}"
            document = json.loads(self.storage.read_bytes(key) or b"{}")
            if not self.signing_key.verifies(document):
                document[SIGNATURE_FIELD] = self.signing_key.sign(document)
                data = json.dumps(document, indent=2, sort_keys=True) + "\n"
                self.storage.write_bytes_atomic(key, data.encode())
                signed.append(f"version {version}")
        self.seals.write(model, [config_digest(config)])
        return [*signed, "config"]

    def config_problem(self, model: str, config: model_config_pb2.ModelConfig) -> str | None:
        """What makes ``config`` not the model's sealed config (``integrity.seal``)."""
        return self.seals.problem(model, config)

    def public_config(self, model: str) -> model_config_pb2.ModelConfig | None:
        """The public name's config (an ensemble pinning stable, or the weighted model),
        None before the first publish."""
        return self._read_config(model)

    def write_public(
        self,
        model: str,
        config: model_config_pb2.ModelConfig,
        files: dict[str, bytes] | None = None,
    ) -> None:
        """Replace the public name's config (it exists once the model is published), after
        the ``files`` its version folder needs (the weighted model's), each written only
        when it differs."""
        for name, data in (files or {}).items():
            key = f"{model}/{ALIAS_VERSION}/{name}"
            if self.storage.read_bytes(key) != data:
                self.storage.write_bytes_atomic(key, data)
        if self.public_config(model) != config:
            self.storage.write_bytes_atomic(f"{model}/{CONFIG_FILE}", render_config(config))

    def manifest(self, model: str, version: str) -> dict[str, Any] | None:
        data = self.storage.read_bytes(f"{versions_model_name(model)}/{version}/{MANIFEST_FILE}")
        if data is None:
            return None
        try:
            manifest: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise StorageError(f"corrupt manifest of {model} version {version}") from exc
        return manifest

    def class_names(self, model: str, version: str) -> tuple[str, ...] | None:
        """The classes ``version`` names, from its manifest (None: no readable list there,
        e.g. a folder copied in by hand; callers then use the config's)."""
        try:
            manifest = self.manifest(model, version)
        except StorageError:
            return None
        names = None if manifest is None else manifest.get("class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        return tuple(names)

    def check_compatible(self, model: str, candidate: model_config_pb2.ModelConfig) -> None:
        """A new version must match the model's backend and inputs/outputs: one config
        serves all its versions. A version of another format would be loaded with the
        model's backend and find no file of its own (the python backend then hangs the
        load for good: "Python model file not found", the version LOADING until Triton
        restarts)."""
        current = self.config(model)
        if current is None:
            return
        if serving_kind(current) != serving_kind(candidate):
            raise IncompatibleModelError(
                f"the new version is served by {serving_kind(candidate)} but {model} is "
                f"served by {serving_kind(current)} (one config serves all its versions); "
                "export it in the model's format or publish it under a new model name"
            )
        difference = io_difference(candidate, current)
        if difference:
            raise IncompatibleModelError(
                f"the new version does not fit {model}: {difference} (one config serves "
                "every version: export it with the model's settings, or publish it under a "
                "new model name)"
            )

    def add_version(
        self,
        model: str,
        version: str,
        staged_model_dir: Path,
        progress: Callable[[str], None] | None = None,
        *,
        alias: model_config_pb2.ModelConfig | None = None,
    ) -> bool:
        """Move a staged version (and, for a new model, its config) into place.

        Returns True when this created the model. A new model's versions folder appears
        whole, config included; a later version's folder appears whole beside the others.
        The public name's folder (config ``alias``) is published once, when missing. Python
        versions get ``block_bytecode`` first; with a signing key, the manifest is signed.
        """
        staged_version = staged_model_dir / version
        if not staged_version.is_dir():
            raise StorageError(f"staged export has no version folder {staged_version}")
        block_bytecode(staged_version)
        if self.signing_key is not None:
            sign_manifest(staged_version / MANIFEST_FILE, self.signing_key)
        folder = versions_model_name(model)
        created = not self.storage.exists(folder)
        if created:
            if alias is None:
                raise StorageError(f"{model} is new: its public name's config is needed")
            self._refuse_old_layout(model)
            staged_config = staged_model_dir / CONFIG_FILE
            sealed = parse_config(staged_config.read_bytes(), source=str(staged_config))
            self.seals.write(model, [config_digest(sealed)])
            self.storage.publish_dir(staged_model_dir, folder, progress)
        else:
            self.storage.publish_dir(staged_version, f"{folder}/{version}", progress)
        if alias is not None and self.public_config(model) is None:
            try:
                self._publish_alias(model, alias, progress)
            except BaseException:
                self.remove_version(model, version, created_model=created)
                raise
        return created

    def _publish_alias(
        self,
        model: str,
        alias: model_config_pb2.ModelConfig,
        progress: Callable[[str], None] | None,
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="repo-manager-alias-") as tmp:
            staged = Path(tmp) / model
            (staged / ALIAS_VERSION).mkdir(parents=True)
            (staged / ALIAS_VERSION / "README").write_text(ALIAS_README)
            (staged / CONFIG_FILE).write_bytes(render_config(alias))
            self.storage.remove_tree(model)  # a folder without config: an unfinished publish
            self.storage.publish_dir(staged, model, progress)

    def remove_version(self, model: str, version: str, *, created_model: bool) -> None:
        """Undo ``add_version`` (used when Triton refuses the new version)."""
        if created_model:
            self.storage.remove_tree(model)
            self.storage.remove_tree(versions_model_name(model))
        else:
            self.storage.remove_tree(f"{versions_model_name(model)}/{version}")
