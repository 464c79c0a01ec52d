"""Plans for several GPU kinds join one version; anything that cannot load together is refused.

The TensorRT build itself needs a GPU (tests/gpu); merging is file and config work, tested
here on version folders laid out exactly as ``export --format plan`` writes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from export.manifest import (
    build_manifest,
    manifest_mismatches,
    read_checked_manifest,
    write_manifest,
)
from export.plans import add_gpu_plan, plan_filename
from repo_manager.errors import IncompatibleModelError, InvalidInputError
from repo_manager.modelconfig import (
    ModelConfig,
    TensorSpec,
    build_detector_config,
    merge_cc_model_filenames,
    parse_config,
    render_config,
)

IMAGES = TensorSpec(name="images", data_type="TYPE_FP32", dims=(3, 320, 320))
OUTPUT = TensorSpec(name="output0", data_type="TYPE_FP32", dims=(6, 2100))


def plan_export(
    model_dir: Path, capability: str, *, tensorrt: str = "10.3.0.26", weights: bytes = b"w"
) -> ModelConfig:
    """A model folder as ``export --format plan`` writes it on a GPU of ``capability``."""
    version_dir = model_dir / "3"
    version_dir.mkdir(parents=True)
    plan_file = plan_filename(capability)
    (version_dir / plan_file).write_bytes(f"plan for sm {capability}".encode())
    config = build_detector_config(
        name="yolov8s",
        backend_or_platform="tensorrt_plan",
        max_batch_size=8,
        inputs=[IMAGES],
        outputs=[OUTPUT],
        instance_kind="KIND_GPU",
        instance_count=1,
        class_names=["square", "disc"],
        imgsz=320,
        cc_model_filenames={capability: plan_file},
    )
    (model_dir / "config.pbtxt").write_bytes(render_config(config))
    source = model_dir.parent / "best.pt"
    extra: dict[str, Any] = {
        "tensorrt": tensorrt,
        "gpu": f"GPU sm{capability}",
        "compute_capability": capability,
        "plans": {capability: {"file": plan_file, "gpu": f"GPU sm{capability}"}},
    }
    manifest = build_manifest(
        version_dir=version_dir,
        model_name="yolov8s",
        version="3",
        format="plan",
        source_weights=source,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        imgsz=320,
        class_names=["square", "disc"],
        max_batch_size=8,
        inputs=[IMAGES],
        outputs=[OUTPUT],
        extra=extra,
    )
    write_manifest(version_dir, manifest)
    return config


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_plan_file_is_named_after_its_compute_capability() -> None:
    assert plan_filename("8.9") == "model.sm89.plan"
    assert plan_filename("10.0") == "model.sm100.plan"
    with pytest.raises(ValueError):
        plan_filename("sm89")


def test_a_second_gpu_kind_joins_the_version_and_the_config_maps_both(tmp_path: Path) -> None:
    target = tmp_path / "out" / "yolov8s"
    plan_export(target, "8.9")
    other = tmp_path / "h100" / "yolov8s"
    built_config = plan_export(other, "9.0")

    manifest = add_gpu_plan(target, "3", other / "3", built_config)

    assert sorted(manifest["plans"]) == ["8.9", "9.0"]
    assert (target / "3" / "model.sm90.plan").read_bytes() == b"plan for sm 9.0"
    assert manifest_mismatches(target / "3", read_checked_manifest(target / "3")) == []
    config = parse_config((target / "config.pbtxt").read_bytes(), source="config.pbtxt")
    assert dict(config.cc_model_filenames) == {"8.9": "model.sm89.plan", "9.0": "model.sm90.plan"}
    assert sorted(p.name for p in target.iterdir()) == ["3", "config.pbtxt"]  # no staging left


@pytest.mark.parametrize(
    ("capability", "changes", "message"),
    [
        ("9.0", {"tensorrt": "10.5.0.18"}, "one Triton release cannot load both"),
        ("9.0", {"weights": b"other weights"}, "another source_weights"),
        ("8.9", {}, "already has a plan for compute capability 8.9"),
    ],
)
def test_a_plan_that_cannot_join_is_refused_and_the_folder_is_unchanged(
    tmp_path: Path, capability: str, changes: dict[str, Any], message: str
) -> None:
    target = tmp_path / "out" / "yolov8s"
    plan_export(target, "8.9")
    before = files(target)
    other = tmp_path / "other" / "yolov8s"
    built_config = plan_export(other, capability, **changes)

    with pytest.raises((IncompatibleModelError, InvalidInputError), match=message):
        add_gpu_plan(target, "3", other / "3", built_config)
    assert files(target) == before


def test_a_tampered_version_folder_is_refused_before_merging(tmp_path: Path) -> None:
    target = tmp_path / "out" / "yolov8s"
    plan_export(target, "8.9")
    (target / "3" / "model.sm89.plan").write_bytes(b"swapped")
    other = tmp_path / "h100" / "yolov8s"
    built_config = plan_export(other, "9.0")
    with pytest.raises(InvalidInputError, match="differs from its manifest"):
        add_gpu_plan(target, "3", other / "3", built_config)


def test_cc_maps_merge_and_a_conflicting_file_for_one_capability_is_refused() -> None:
    config = ModelConfig(name="m")
    config.cc_model_filenames["8.9"] = "model.sm89.plan"
    merged = merge_cc_model_filenames(config, {"9.0": "model.sm90.plan"})
    assert dict(merged.cc_model_filenames) == {"8.9": "model.sm89.plan", "9.0": "model.sm90.plan"}
    assert dict(config.cc_model_filenames) == {"8.9": "model.sm89.plan"}  # a copy
    with pytest.raises(IncompatibleModelError, match=r"8\.9"):
        merge_cc_model_filenames(config, {"8.9": "model.plan"})
