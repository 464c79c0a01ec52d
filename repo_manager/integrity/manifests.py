"""A version's manifest as the verifier reads it, and the optional HMAC signature.

The export writes ``manifest.json`` with the sha256 of every file of the version
(``export.manifest``); the manager only reads it here. Well-formed means: a JSON object
whose ``files`` maps each relative path to 64 hex digits, naming this model and version
when it names any.

Signing (``--signing-key FILE``): HMAC-SHA256 with a key only the manager holds, over the
manifest's canonical JSON (sorted keys, no spaces) without its ``signature`` field. HMAC
rather than ed25519 because the manager is the only party that ever verifies (Routers
never load a model), so a secret it holds is all a signature needs; the standard library
has it, and no new dependency is pulled in. A writer of the repository without the key
can then change no file and forge no manifest: the signature covers the model, the
version and every file's sha256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repo_manager.errors import InvalidInputError

__all__ = [
    "SIGNATURE_FIELD",
    "SigningKey",
    "VersionManifest",
    "parse_manifest",
    "sign_manifest",
]

SIGNATURE_FIELD = "signature"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ALGORITHM = "hmac-sha256"


@dataclass(kw_only=True, frozen=True)
class SigningKey:
    """The manager's HMAC key (its bytes never printed: ``repr`` hides them)."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise InvalidInputError("the signing key must hold at least 16 bytes")

    @classmethod
    def from_file(cls, path: str | Path) -> SigningKey:
        """The key in ``path`` (surrounding whitespace ignored); one line when unreadable."""
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise InvalidInputError(f"cannot read the signing key {path}: {exc.strerror}") from exc
        return cls(secret=secret)

    def sign(self, document: Mapping[str, Any]) -> dict[str, str]:
        """The signature field's value for ``document`` (its own signature left out)."""
        mac = hmac.new(self.secret, _canonical(document), hashlib.sha256).hexdigest()
        return {"algorithm": _ALGORITHM, "value": mac}

    def verifies(self, document: Mapping[str, Any]) -> bool:
        found = document.get(SIGNATURE_FIELD)
        if not isinstance(found, dict) or found.get("algorithm") != _ALGORITHM:
            return False
        return hmac.compare_digest(str(found.get("value", "")), self.sign(document)["value"])

    def __repr__(self) -> str:
        return "SigningKey(<hidden>)"


def _canonical(document: Mapping[str, Any]) -> bytes:
    unsigned = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


@dataclass(kw_only=True, frozen=True)
class VersionManifest:
    """The parts of a manifest the verifier checks."""

    document: dict[str, Any]
    #: sha256 (hex) of every file of the version, by path relative to the version folder.
    files: dict[str, str]


def parse_manifest(data: bytes, *, model: str, version: str) -> VersionManifest | str:
    """The manifest in ``data``, or what is wrong with it (in words, for one error line)."""
    try:
        document = json.loads(data)
    except ValueError:
        return "is not JSON"
    if not isinstance(document, dict):
        return "is not a JSON object"
    files = document.get("files")
    if not isinstance(files, dict) or not files:
        return "names no files"
    for name, digest in files.items():
        if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            return f"has no sha256 for {name!r}"
        if name.startswith("/") or ".." in name.split("/"):
            return f"names a file outside its version: {name!r}"
    for field, expected in (("model", model), ("version", version)):
        if field in document and str(document[field]) != expected:
            return f"is the manifest of {field} {document[field]!r}, not {expected!r}"
    return VersionManifest(document=document, files=dict(files))


def sign_manifest(path: Path, key: SigningKey) -> None:
    """Add ``key``'s signature to the manifest at ``path`` (a staged version's)."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot sign {path}: not a readable manifest") from exc
    if not isinstance(document, dict):
        raise InvalidInputError(f"cannot sign {path}: not a manifest (a JSON object)")
    document[SIGNATURE_FIELD] = key.sign(document)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
