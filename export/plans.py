"""One version, several GPU kinds: a TensorRT plan per compute capability.

A plan only runs on the compute capability it was built on, and a fleet may mix GPU
kinds. Triton's ``cc_model_filenames`` picks, per GPU, the file of that GPU's capability,
so every plan is named after its capability (``model.sm89.plan``), in every version, and
the model's config maps each capability to its file. The map is model-wide, so names must
not depend on which GPU happened to build first.

The flow for a mixed fleet: export the version on one GPU kind, then run the same export
with ``--add-gpu`` on each other kind against a copy of that folder; each run builds this
GPU's plan and merges it in. Only a plan of the *same* weights and the *same* TensorRT
(one Triton release serves them all) can join.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.manifest import file_digests, read_checked_manifest, write_manifest
from repo_manager.errors import ExportError, IncompatibleModelError, InvalidInputError
from repo_manager.modelconfig import (
    ModelConfig,
    merge_cc_model_filenames,
    parse_config,
    render_config,
)
from repo_manager.names import CONFIG_FILE

__all__ = ["add_gpu_plan", "plan_filename"]


def plan_filename(compute_capability: str) -> str:
    """``8.9`` -> ``model.sm89.plan``: the plan file of one compute capability."""
    major, _, minor = compute_capability.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability {compute_capability!r} is not MAJOR.MINOR")
    return f"model.sm{major}{minor}.plan"


def _check_joinable(existing: Mapping[str, Any], built: Mapping[str, Any], where: Path) -> None:
    """Only this GPU's plan of the same weights, interface and TensorRT may join."""
    if existing.get("format") != "plan":
        raise InvalidInputError(f"{where} is a {existing.get('format')} export, not a plan")
    same = ("source_weights", "imgsz", "max_batch_size", "inputs", "outputs", "class_names")
    for key in same:
        if existing.get(key) != built.get(key):
            raise IncompatibleModelError(f"{where} was exported with another {key}")
    if existing.get("tensorrt") != built.get("tensorrt"):
        raise IncompatibleModelError(
            f"{where} holds TensorRT {existing.get('tensorrt')} plans, this machine builds "
            f"with {built.get('tensorrt')}: one Triton release cannot load both"
        )
    capability = str(built["compute_capability"])
    if capability in existing.get("plans", {}):
        raise InvalidInputError(f"{where} already has a plan for compute capability {capability}")


def add_gpu_plan(
    model_dir: Path, version: str, built_version_dir: Path, built_config: ModelConfig
) -> dict[str, Any]:
    """Merge the plan in ``built_version_dir`` (this GPU's export) into ``model_dir/version``.

    Everything is checked first; the new version folder is staged beside the old one and
    swapped in by rename, then the config is replaced, so the config never maps a plan
    file that is not there yet. Returns the merged manifest.
    """
    target = model_dir / version
    existing = read_checked_manifest(target)
    built = read_checked_manifest(built_version_dir)
    _check_joinable(existing, built, target)
    capability = str(built["compute_capability"])
    filename = plan_filename(capability)
    config_path = model_dir / CONFIG_FILE
    config = merge_cc_model_filenames(
        parse_config(config_path.read_bytes(), source=str(config_path)),
        dict(built_config.cc_model_filenames),
    )

    unique = uuid.uuid4().hex[:12]
    staging = model_dir / f".{version}.staging-{unique}"
    retired = model_dir / f".{version}.retired-{unique}"
    staged_config = model_dir / f".{CONFIG_FILE}.staging-{unique}"
    try:
        shutil.copytree(target, staging)
        shutil.copy2(built_version_dir / filename, staging / filename)
        manifest = dict(existing)
        manifest["plans"] = {**existing.get("plans", {}), **built.get("plans", {})}
        manifest["files"] = file_digests(staging)
        write_manifest(staging, manifest)
        staged_config.write_bytes(render_config(config))
        os.rename(target, retired)
        os.rename(staging, target)
        os.replace(staged_config, config_path)
    except OSError as exc:
        if retired.exists() and not target.exists():
            os.rename(retired, target)
        raise ExportError(f"cannot add the plan to {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        staged_config.unlink(missing_ok=True)
    return manifest
