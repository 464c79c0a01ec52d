"""A content-addressed cache of checked ONNX exports: the same weights with the same
settings go through torch once per machine, not once per publish.

    key = sha256(weights sha256, imgsz asked for, opset, contract, max batch (end2end),
                 tool versions, export code)
    <root>/<key[:2]>/<key>/model.onnx + entry.json     staged beside, then renamed

Why: a team publishes the same weights to several repositories or fleets (and the test
suite publishes the same detector about a hundred times); each export loads torch and
Ultralytics, traces the model and runs it twice for the numerical check. An entry is
written only after the export passed every check, and a read checks the ONNX against the
sha256 its entry recorded: a damaged or tampered entry is a miss, removed and rebuilt,
never served. The key holds the versions of every tool that shapes the bytes and a digest
of the export code itself, so an upgrade or a code change never reuses an old graph.

``REPO_MANAGER_EXPORT_CACHE`` names the folder (default
``~/.cache/repo-manager/exports``); ``off`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from export.manifest import tool_versions
from export.weights import sha256_file
from repo_manager.contract import END2END, RAW

__all__ = [
    "CACHE_ENV",
    "CachedExport",
    "ExportCache",
    "default_export_cache",
    "export_cache_key",
]

CACHE_ENV = "REPO_MANAGER_EXPORT_CACHE"
ONNX_FILE = "model.onnx"
ENTRY_FILE = "entry.json"
#: Bumped when the entry's layout changes.
ENTRY_SCHEMA = 2
#: The modules whose code decides the exported bytes and the facts recorded with them.
_EXPORT_CODE = (
    ("export", "onnx_export.py"),
    ("export", "weights.py"),
    ("export", "cache.py"),
    ("repo_manager", "contract.py"),  # the end-to-end graph's confidence floor, IoU and K
)


def default_export_cache() -> Path | None:
    """The cache folder the environment names (None: ``off``)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "repo-manager" / "exports"


@cache
def _export_code_digest() -> str:
    digest = hashlib.sha256()
    for package, name in _EXPORT_CODE:
        digest.update(f"{package}/{name}".encode())
        digest.update(resources.files(package).joinpath(name).read_bytes())
    return digest.hexdigest()


def export_cache_key(
    *,
    weights_sha256: str,
    imgsz: int | None,
    opset: int | None,
    contract: str = RAW,
    max_batch: int = 1,
) -> str:
    """The key of an export: everything that decides the ONNX bytes, hashed (the max batch
    only for the end-to-end contract: an NMS graph is traced at it)."""
    parts = {
        "schema": ENTRY_SCHEMA,
        "weights_sha256": weights_sha256,
        "imgsz": imgsz,
        "opset": opset,
        "contract": contract,
        "max_batch": max_batch if contract == END2END else None,
        "tools": {k: v for k, v in tool_versions().items() if k != "repo-manager"},
        "code": _export_code_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(kw_only=True, frozen=True)
class CachedExport:
    """What an earlier, checked export of the same weights and settings produced."""

    onnx: Path
    weights_sha256: str
    imgsz: int
    class_names: tuple[str, ...]
    strides: tuple[int, ...]
    train_imgsz: int | None
    #: The ONNX-vs-PyTorch differences measured when the entry was made.
    numerical_check: Mapping[str, Any] | None
    #: The served contract and the head mode the graph was made in (``repo_manager.contract``).
    contract: str = RAW
    head_mode: str = "one2many"
    #: The checkpoint's lineage (``export.weights.checkpoint_lineage``).
    lineage: Mapping[str, Any] | None = None


@dataclass(kw_only=True, frozen=True)
class ExportCache:
    """Checked ONNX exports under ``root``, safe for several processes at once."""

    root: Path

    def _entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> CachedExport | None:
        """The entry of ``key`` if it is intact (a damaged one is removed: a miss)."""
        folder = self._entry_dir(key)
        try:
            entry = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
            intact = (
                entry.get("schema") == ENTRY_SCHEMA
                and sha256_file(folder / ONNX_FILE) == entry["onnx_sha256"]
            )
            found = CachedExport(
                onnx=folder / ONNX_FILE,
                weights_sha256=str(entry["weights_sha256"]),
                imgsz=int(entry["imgsz"]),
                class_names=tuple(str(n) for n in entry["class_names"]),
                strides=tuple(int(s) for s in entry["strides"]),
                train_imgsz=entry["train_imgsz"],
                numerical_check=entry["numerical_check"],
                contract=str(entry["contract"]),
                head_mode=str(entry["head_mode"]),
                lineage=entry["lineage"],
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if not intact:
            self._discard(folder)
            return None
        return found

    def put(self, key: str, onnx: Path, made: CachedExport) -> None:
        """Keep a checked export under ``key``; a failure to write only loses the reuse."""
        folder = self._entry_dir(key)
        staging = self.root / f".staging-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(parents=True)
            shutil.copyfile(onnx, staging / ONNX_FILE)
            entry = {
                **{k: v for k, v in asdict(made).items() if k != "onnx"},
                "schema": ENTRY_SCHEMA,
                "onnx_sha256": sha256_file(staging / ONNX_FILE),
            }
            (staging / ENTRY_FILE).write_text(json.dumps(entry, sort_keys=True), "utf-8")
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, folder)  # another process may have won: its entry is as good
        except OSError:
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _discard(self, folder: Path) -> None:
        doomed = self.root / f".discard-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(folder, doomed)
        except OSError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
