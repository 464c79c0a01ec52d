"""The export cache: the same weights and settings go through torch once, and a damaged
entry is never served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import export.onnx_export as onnx_export
from export import ExportOptions, ExportResult, export_model
from export.cache import ENTRY_FILE, ONNX_FILE
from export.tiny_detector import make_untrained_detector

IMGSZ = 160


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "detector.pt"
    make_untrained_detector(path)
    return path


def options(cache: Path | None, **overrides: Any) -> ExportOptions:
    return ExportOptions(
        **{"imgsz": IMGSZ, "max_batch": 4, "format": "onnx", "export_cache": cache, **overrides}
    )


def count_torch_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every export through torch this test makes."""
    calls: list[Path] = []
    real = onnx_export.export_onnx

    def counting(detector: Any, dest: Path, **kwargs: Any) -> None:
        calls.append(dest)
        real(detector, dest, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", counting)
    return calls


def graph_of(onnx_bytes: bytes) -> bytes:
    import onnx

    return bytes(onnx.load_from_string(onnx_bytes).graph.SerializeToString())


def entries(cache: Path) -> list[Path]:
    return sorted(p.parent for p in cache.glob(f"*/*/{ENTRY_FILE}"))


@pytest.fixture(scope="module")
def cached_once(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """One export through torch into a module's cache (each test copies the cache)."""
    root = tmp_path_factory.mktemp("cached")
    return export_model(weights, root / "repo" / "m", model_name="m", options=options(root / "c"))


@pytest.fixture
def cache(cached_once: ExportResult, tmp_path: Path) -> Path:
    """A private copy of the cache holding the module's one entry."""
    shutil.copytree(cached_once.model_dir.parent.parent / "c", tmp_path / "cache")
    return tmp_path / "cache"


def test_the_same_weights_and_settings_are_exported_through_torch_once(
    weights: Path, cached_once: ExportResult, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_torch_exports(monkeypatch)
    again = export_model(
        weights,
        cache.parent / "b" / "other",
        model_name="other",
        version="7",
        options=options(cache),
    )
    assert calls == []
    first = cached_once
    onnx_bytes = (first.version_dir / "model.onnx").read_bytes()
    assert (again.version_dir / "model.onnx").read_bytes() == onnx_bytes
    assert again.manifest["files"]["model.onnx"] == first.manifest["files"]["model.onnx"]
    assert again.manifest["numerical_check"] == first.manifest["numerical_check"]
    assert again.manifest["class_names"] == first.manifest["class_names"]
    assert again.manifest["source_weights"] == first.manifest["source_weights"]
    assert (again.manifest["model"], again.manifest["version"]) == ("other", "7")
    assert len(entries(cache)) == 1


def test_another_image_size_is_another_export(
    weights: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_torch_exports(monkeypatch)
    bigger = export_model(
        weights, cache.parent / "b" / "m", model_name="m", options=options(cache, imgsz=192)
    )
    assert len(calls) == 1
    assert bigger.manifest["imgsz"] == 192
    assert len(entries(cache)) == 2


def test_a_damaged_entry_is_never_served_and_is_rebuilt(
    weights: Path, cached_once: ExportResult, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_torch_exports(monkeypatch)
    (entry,) = entries(cache)
    cached = entry / ONNX_FILE
    damaged = cached.read_bytes()[:-64] + bytes(64)  # zeroed bytes at its end
    cached.write_bytes(damaged)
    again = export_model(weights, cache.parent / "b" / "m", model_name="m", options=options(cache))
    assert len(calls) == 1  # the damaged entry was a miss: exported again through torch
    served = (again.version_dir / "model.onnx").read_bytes()
    assert served != damaged
    # The same graph as the first export (the export date in its metadata may differ).
    first = (cached_once.version_dir / "model.onnx").read_bytes()
    assert graph_of(served) == graph_of(first)
    (rebuilt,) = entries(cache)
    assert (rebuilt / ONNX_FILE).read_bytes() == served
    recorded = json.loads((rebuilt / ENTRY_FILE).read_text())
    assert recorded["weights_sha256"] == cached_once.manifest["source_weights"]["sha256"]


def test_with_the_cache_off_the_export_goes_through_torch_and_keeps_nothing(
    weights: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_torch_exports(monkeypatch)
    before = sorted(cache.rglob("*"))
    export_model(weights, cache.parent / "b" / "m", model_name="m", options=options(None))
    assert len(calls) == 1  # a hit was there to take
    assert sorted(cache.rglob("*")) == before
    assert sorted(p.name for p in cache.parent.iterdir()) == ["b", "cache"]


def test_the_environment_names_the_cache_and_off_turns_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPO_MANAGER_EXPORT_CACHE", str(tmp_path / "here"))
    assert ExportOptions().export_cache == tmp_path / "here"
    monkeypatch.setenv("REPO_MANAGER_EXPORT_CACHE", "off")
    assert ExportOptions().export_cache is None
    monkeypatch.delenv("REPO_MANAGER_EXPORT_CACHE")
    assert ExportOptions().export_cache == Path.home() / ".cache" / "repo-manager" / "exports"
