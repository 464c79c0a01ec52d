"""Trust only what was published: versions checked against their manifests, the model's
config against the seal the manager wrote, before anything is loaded or given traffic."""

from __future__ import annotations

from repo_manager.integrity.digests import DigestCache
from repo_manager.integrity.manifests import (
    SIGNATURE_FIELD,
    SigningKey,
    parse_manifest,
    sign_manifest,
)
from repo_manager.integrity.seal import ConfigSeal, config_digest, seal_key
from repo_manager.integrity.verifier import Verifier

__all__ = [
    "SIGNATURE_FIELD",
    "ConfigSeal",
    "DigestCache",
    "SigningKey",
    "Verifier",
    "config_digest",
    "parse_manifest",
    "seal_key",
    "sign_manifest",
]
