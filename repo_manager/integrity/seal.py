"""The seal of a model's config: the sha256 of the config the manager last wrote.

One config serves every version of a model, and every load passes it to Triton, so a
config changed behind the manager's back (another backend, an ``EXECUTION_ENV_PATH``
with code of its own) is as dangerous as a changed ``model.py``. Versions carry manifests;
the config, which the manager rewrites (version policy, GPU kinds), carries this seal
instead: ``.repo-manager.<model>.config-seal`` at the repository root (a root file: Triton
never lists it nor reloads a model for it; not ``.json``, which would be the state file
of a model named ``<model>.config``), written by ``ModelRepository`` with every
config it writes, signed when the manager holds a signing key.

The digest leaves out ``version_policy``: the manager changes it with nearly every move,
and the load call states the policy itself. A content change writes the seal twice: first
accepting the old and the new digest, then (after the config) only the new one, so a
manager killed in between leaves a seal that still accepts what is on disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from repo_manager.integrity.manifests import SIGNATURE_FIELD, SigningKey
from repo_manager.modelconfig import ModelConfig, render_config
from repo_manager.names import CONFIG_FILE, versions_model_name
from repo_manager.storage import Storage

__all__ = ["ConfigSeal", "config_digest", "seal_key"]


def seal_key(model: str) -> str:
    return f".repo-manager.{model}.config-seal"


def config_digest(config: ModelConfig) -> str:
    """sha256 of the config as the manager renders it, version policy left out."""
    unpinned = ModelConfig()
    unpinned.CopyFrom(config)
    unpinned.ClearField("version_policy")
    return hashlib.sha256(render_config(unpinned)).hexdigest()


class ConfigSeal:
    """Reads and writes the seals of one repository's model configs."""

    def __init__(self, storage: Storage, signing_key: SigningKey | None = None) -> None:
        self.storage = storage
        self.signing_key = signing_key

    def write(self, model: str, digests: Sequence[str]) -> None:
        document: dict[str, object] = {"schema": 1, "model": model, "sha256": list(digests)}
        if self.signing_key is not None:
            document[SIGNATURE_FIELD] = self.signing_key.sign(document)
        data = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
        self.storage.write_bytes_atomic(seal_key(model), data)

    def accepted(self, model: str) -> list[str] | str | None:
        """The digests the seal accepts; None when there is no seal; a string saying
        what is wrong with a seal that is no seal of this manager's."""
        data = self.storage.read_bytes(seal_key(model))
        if data is None:
            return None
        try:
            document = json.loads(data)
            digests = [str(d) for d in document["sha256"]]
            sealed_model = document["model"]
        except (ValueError, KeyError, TypeError):
            return "is malformed"
        if sealed_model != model:
            return f"is the seal of {sealed_model!r}"
        if self.signing_key is not None and not self.signing_key.verifies(document):
            return "is not signed with the manager's signing key"
        return digests

    def problem(self, model: str, config: ModelConfig) -> str | None:
        """What is wrong with ``config`` as the model's config (None: it is the sealed
        one). A model without a seal (published before seals existed) is sealed now, unless
        the manager holds a signing key: then an unsealed config is refused."""
        where = f"{self.storage.location}/{seal_key(model)}"
        accepted = self.accepted(model)
        digest = config_digest(config)
        if accepted is None:
            if self.signing_key is not None:
                return f"{where} is missing (no config sealed with the manager's signing key)"
            self.write(model, [digest])
            return None
        if isinstance(accepted, str):
            return f"{where} {accepted}"
        if digest not in accepted:
            config_file = f"{self.storage.location}/{versions_model_name(model)}/{CONFIG_FILE}"
            return f"{config_file} differs from the config repo-manager wrote (its seal)"
        return None
