"""Is a version what was published? Its files against its manifest, before any load.

A version folder passes when its ``manifest.json`` is present and well-formed (signed,
when the manager holds a signing key), every file the manifest names is there with the
sha256 it records, and no other file is: nothing but the manifest itself and the empty
``__pycache__`` file that keeps the python backend from writing bytecode (a *folder*
there could hold a ``.pyc`` that Python would run instead of the verified ``model.py``).
Digests come from a ``DigestCache``: a file is read again only when it changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping

from repo_manager.errors import IntegrityError
from repo_manager.integrity.digests import DigestCache
from repo_manager.integrity.manifests import SigningKey, VersionManifest, parse_manifest
from repo_manager.names import BYTECODE_FOLDER, MANIFEST_FILE, versions_model_name
from repo_manager.storage import Storage

__all__ = ["Verifier"]

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Verifier:
    """Verifies the versions of one repository (digests cached across calls)."""

    def __init__(self, storage: Storage, *, signing_key: SigningKey | None = None) -> None:
        self.storage = storage
        self.signing_key = signing_key
        self.cache = DigestCache(storage)
        self._manifests: dict[str, tuple[Hashable, VersionManifest | str]] = {}

    def problem(self, model: str, version: str) -> str | None:
        """What makes ``version`` of ``model`` not the published one, naming the file
        (None: every file is as its manifest says)."""
        folder = f"{versions_model_name(model)}/{version}"
        where = f"{self.storage.location}/{folder}"
        listed = self.storage.list_files(folder)
        if MANIFEST_FILE not in listed:
            return f"{where}/{MANIFEST_FILE} is missing"
        manifest = self._manifest(folder, listed[MANIFEST_FILE], model, version)
        if manifest is None:
            return f"{where}/{MANIFEST_FILE} is missing"
        if isinstance(manifest, str):
            return f"{where}/{MANIFEST_FILE} {manifest}"
        if self.signing_key is not None and not self.signing_key.verifies(manifest.document):
            return f"{where}/{MANIFEST_FILE} is not signed with the manager's signing key"
        return self._files_problem(folder, where, listed, manifest)

    def _manifest(
        self, folder: str, token: Hashable, model: str, version: str
    ) -> VersionManifest | str | None:
        """The version's manifest, read again only when its change token moved (a pass of
        the long-running manager then costs S3 one listing per version, no read)."""
        known = self._manifests.get(folder)
        if known is not None and known[0] == token:
            return known[1]
        data = self.storage.read_bytes(f"{folder}/{MANIFEST_FILE}")
        if data is None:
            return None
        parsed = parse_manifest(data, model=model, version=version)
        self._manifests[folder] = (token, parsed)
        return parsed

    def _files_problem(
        self, folder: str, where: str, listed: Mapping[str, Hashable], manifest: VersionManifest
    ) -> str | None:
        for name in sorted(manifest.files):
            if name not in listed:
                return f"{where}/{name} is missing"
        for name in sorted(listed):
            if name == MANIFEST_FILE or name in manifest.files:
                continue
            if name == BYTECODE_FOLDER and self._digest(folder, name, listed) == _EMPTY_SHA256:
                continue
            return f"{where}/{name} is not in its manifest"
        for name in sorted(manifest.files):
            digest = self._digest(folder, name, listed)
            if digest is None:
                return f"{where}/{name} is missing"
            if digest != manifest.files[name]:
                return f"{where}/{name} differs from its manifest (sha256)"
        return None

    def _digest(self, folder: str, name: str, listed: Mapping[str, Hashable]) -> str | None:
        return self.cache.digest(f"{folder}/{name}", listed[name])

    def require(self, model: str, version: str) -> None:
        """Raise IntegrityError (one line naming the file) unless the version passes."""
        found = self.problem(model, version)
        if found is not None:
            raise IntegrityError(f"{model} version {version} refused: {found}")
