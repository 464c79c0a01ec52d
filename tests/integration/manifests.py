"""Tests that publish a version with a deliberate defect (a slow or failing ``model.py``)
write the defect into the version and then its manifest, as an export of that code would:
the version is then *published* that way, not tampered with after its publish (which the
manager refuses: tests/integration/test_tampering.py)."""

from __future__ import annotations

import json
from pathlib import Path

from export.manifest import file_digests, write_manifest
from repo_manager.names import MANIFEST_FILE


def reseal(version_dir: Path, *, version: str | None = None) -> None:
    """Rewrite ``version_dir``'s manifest for the files it holds now (and ``version``)."""
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    manifest["files"] = file_digests(version_dir)
    if version is not None:
        manifest["version"] = version
    write_manifest(version_dir, manifest)
