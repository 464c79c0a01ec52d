"""``export_model``: Ultralytics weights -> one checked Triton model folder.

    weights ─copy─▶ work dir ─load+validate─▶ ONNX ─check─▶ staging/<version>/ ─rename─▶ out_dir

Everything is built in a staging folder beside ``out_dir`` (same filesystem) and renamed
into place only after every check passed, so ``out_dir`` never holds a half-made or
unchecked version. Nothing is written beside the source weights and nothing needs the
network.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from export.cache import CachedExport, ExportCache, default_export_cache, export_cache_key
from export.formats import FormatSpec, get_format
from export.manifest import build_manifest, write_manifest
from repo_manager.compat import io_difference
from repo_manager.contract import DEFAULT_CONTRACT, check_contract, head_mode
from repo_manager.errors import (
    ExportError,
    IncompatibleModelError,
    InvalidInputError,
    VersionExistsError,
)
from repo_manager.modelconfig import (
    ModelConfig,
    add_tensorrt_accelerator,
    build_detector_config,
    parse_config,
    render_config,
)
from repo_manager.names import CONFIG_FILE, validate_model_name, validate_version

__all__ = [
    "CONFIG_FILE",
    "ExportOptions",
    "ExportResult",
    "export_model",
    "export_plan_for_this_gpu",
    "load_exported",
    "stage_exported",
]

BACKEND_MODEL = "backend/model.py"  # inside the export package

#: The image size of a checkpoint that records no training size.
DEFAULT_IMGSZ = 640


@dataclass(kw_only=True)
class ExportOptions:
    """How to export: serving format, input size, batching, precision (plan only)."""

    format: str = "python"
    #: The served contract (``repo_manager.contract``): ``raw`` or ``end2end``.
    contract: str = DEFAULT_CONTRACT
    #: Square input size; None: the size the checkpoint was trained at (Ultralytics records
    #: ``train_args.imgsz``), else ``DEFAULT_IMGSZ``.
    imgsz: int | None = None
    max_batch: int = 8
    #: Model instances per server (the config's instance group count).
    instances: int = 1
    opset: int | None = None
    fp16: bool = False
    int8: bool = False
    #: Folder of images for INT8 calibration (plan + int8 only).
    calibration_images: Path | None = None
    #: TensorRT timing/calibration cache folder. Default: ~/.cache/repo-manager/tensorrt
    cache_dir: Path | None = None
    #: TensorRT builder workspace limit in GiB. Default 4.
    workspace_gib: float = 4.0
    #: ``onnx`` format only: let Triton's onnxruntime run the model through its TensorRT
    #: execution accelerator on GPU instances (FP16 with ``fp16``). Default False.
    ort_tensorrt: bool = False
    #: Content-addressed cache of checked ONNX exports (see ``export.cache``); None: off.
    #: Default: ``REPO_MANAGER_EXPORT_CACHE``, else ~/.cache/repo-manager/exports.
    export_cache: Path | None = field(default_factory=default_export_cache)


@dataclass(kw_only=True)
class ExportResult:
    """Where the export landed and what it wrote."""

    model_dir: Path
    version_dir: Path
    config: ModelConfig
    manifest: dict[str, Any] = field(default_factory=dict)


def _validate(model_name: str, version: str, options: ExportOptions) -> FormatSpec:
    """Refuse bad input before any work (and a plan export before the ONNX work)."""
    validate_model_name(model_name)  # the repository's rule: an export it would refuse is none
    validate_version(version)
    spec = get_format(options.format)
    check_contract(options.contract)
    if options.imgsz is not None:
        check_imgsz(options.imgsz)
    if options.instances < 1:
        raise InvalidInputError(f"--instances {options.instances} must be at least 1")
    if options.max_batch < 1:
        raise InvalidInputError(f"--max-batch {options.max_batch} must be at least 1")
    if options.ort_tensorrt and spec.name != "onnx":
        raise InvalidInputError(f"--ort-tensorrt applies to --format onnx, not {spec.name}")
    if options.int8 and not spec.needs_gpu:
        raise InvalidInputError(f"--int8 applies to --format plan only, not {spec.name}")
    if options.fp16 and not (spec.needs_gpu or options.ort_tensorrt):
        raise InvalidInputError(
            f"--fp16 applies to --format plan or onnx --ort-tensorrt, not {spec.name}"
        )
    if spec.needs_gpu:
        from export.tensorrt import require_tensorrt

        require_tensorrt()
    return spec


def check_imgsz(imgsz: int) -> int:
    """An image size the detector's strides divide (bad input otherwise)."""
    if imgsz < 32 or imgsz % 32:
        raise InvalidInputError(f"--imgsz {imgsz} must be a positive multiple of 32")
    return imgsz


def _existing_config(out_dir: Path, version: str) -> ModelConfig | None:
    """The config of a model folder we add a version to (None for a new folder)."""
    if (out_dir / version).exists():
        raise VersionExistsError(f"{out_dir / version} already exists; versions are immutable")
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return None
    return parse_config(path.read_bytes(), source=str(path))


def _checked_onnx(weights: Path, work: Path, options: ExportOptions) -> CachedExport:
    """The checked ONNX of ``weights`` in ``work`` (or in the cache) and its facts.

    A cache hit skips torch and Ultralytics altogether; a miss loads, exports and checks
    (graph, I/O, onnxruntime vs PyTorch), then keeps the result for the next export.
    """
    from export.onnx_export import DetectorIO, check_onnx, export_onnx, pytorch_reference
    from export.weights import load_detector, sha256_file

    cache = ExportCache(root=options.export_cache) if options.export_cache else None
    keyed = functools.partial(
        export_cache_key,
        imgsz=options.imgsz,
        opset=options.opset,
        contract=options.contract,
        max_batch=options.max_batch,
    )
    if cache is not None and weights.is_file():
        try:
            key = keyed(weights_sha256=sha256_file(weights))
        except OSError:  # unreadable: load_detector says so in its own words
            key = ""
        found = cache.get(key) if key else None
        if found is not None:
            return found
    detector = load_detector(weights, work)
    imgsz = check_imgsz(options.imgsz or detector.train_imgsz or DEFAULT_IMGSZ)
    mode = head_mode(options.contract, has_one2one_head=detector.has_one2one_head)
    onnx_path = work / "model.onnx"
    export_onnx(
        detector,
        onnx_path,
        imgsz=imgsz,
        opset=options.opset,
        head_mode=mode,
        max_batch=options.max_batch,
    )
    expected = DetectorIO(
        imgsz=imgsz,
        num_classes=detector.num_classes,
        num_anchors=detector.num_anchors(imgsz),
        contract=options.contract,
    )
    reference = pytorch_reference(detector, head_mode=mode, imgsz=imgsz)
    # An NMS graph serves batches up to the one it was traced at (its max batch).
    check = check_onnx(
        onnx_path, expected=expected, reference=reference, batch=min(2, options.max_batch)
    )
    made = CachedExport(
        onnx=onnx_path,
        weights_sha256=detector.sha256,
        imgsz=imgsz,
        class_names=detector.class_names,
        strides=detector.strides,
        train_imgsz=detector.train_imgsz,
        numerical_check=asdict(check) if check else None,
        contract=options.contract,
        head_mode=mode,
        lineage=detector.lineage,
    )
    if cache is not None:
        cache.put(keyed(weights_sha256=detector.sha256), onnx_path, made)
    return made


def export_model(
    weights: Path, out_dir: Path, *, model_name: str, version: str = "1", options: ExportOptions
) -> ExportResult:
    """Export ``weights`` as ``out_dir/config.pbtxt`` + ``out_dir/<version>/``.

    The version folder holds ``model.onnx`` (dynamic batch, spatial dims = imgsz), the
    format's files (``model.py`` for python) and ``manifest.json``. If ``out_dir``
    already holds a model, the new version must match its inputs/outputs and its
    config.pbtxt is kept (the manager owns it). Raises ``WeightsError`` for unusable
    weights and ``ExportError`` when a check fails; ``out_dir`` is then unchanged.
    """
    weights, out_dir = Path(weights), Path(out_dir)
    spec = _validate(model_name, version, options)
    current = _existing_config(out_dir, version)
    # Absolute: Ultralytics may resolve relative paths against its own directories.
    weights = weights.expanduser().absolute()

    from export.onnx_export import read_io

    with tempfile.TemporaryDirectory(prefix="repo-manager-export-") as work:
        made = _checked_onnx(weights, Path(work), options)
        imgsz = made.imgsz
        try:  # only now: bad weights must leave no trace either
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"cannot create {out_dir.parent}: {exc.strerror or exc}") from exc
        # Beside out_dir, so the final move is a rename; mkdir (unlike mkdtemp's 0700)
        # honours the umask, so a Triton running as another user can read the result.
        staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir()
        except OSError as exc:
            raise ExportError(f"cannot write into {out_dir.parent}: {exc.strerror or exc}") from exc
        try:
            version_dir = staging / version
            version_dir.mkdir()
            onnx_path = version_dir / "model.onnx"
            shutil.copyfile(made.onnx, onnx_path)
            inputs, outputs = read_io(onnx_path)
            extra: dict[str, Any] = {
                "numerical_check": made.numerical_check,
                "contract": made.contract,
                "head_mode": made.head_mode,
                "lineage": dict(made.lineage or {}),
            }
            cc_model_filenames: dict[str, str] = {}

            if spec.name == "python":
                source = resources.files("export").joinpath(BACKEND_MODEL)
                (version_dir / "model.py").write_bytes(source.read_bytes())
            elif spec.name == "plan":
                from export.tensorrt import PlanBuild, build_plan, require_tensorrt

                plan_build = PlanBuild(
                    imgsz=imgsz,
                    max_batch=options.max_batch,
                    fp16=options.fp16,
                    int8=options.int8,
                    calibration_images=options.calibration_images,
                    cache_dir=options.cache_dir,
                    workspace_gib=options.workspace_gib,
                )
                from export.plans import plan_filename

                # A plan, and so its file name, belongs to this GPU's compute capability.
                capability = require_tensorrt()["compute_capability"]
                plan_file = plan_filename(capability)
                build = build_plan(onnx_path, version_dir / plan_file, plan_build)
                extra.update(build)
                extra["plans"] = {capability: {"file": plan_file, "gpu": build["gpu"]}}
                cc_model_filenames = {capability: plan_file}
            keep = {*spec.files, *cc_model_filenames.values()}
            for name in {p.name for p in version_dir.iterdir()} - keep:
                (version_dir / name).unlink()  # e.g. the intermediate ONNX of a plan

            config = build_detector_config(
                name=model_name,
                backend_or_platform=spec.backend_or_platform,
                max_batch_size=options.max_batch,
                inputs=inputs,
                outputs=outputs,
                instance_kind="KIND_GPU" if options.ort_tensorrt else spec.instance_kind,
                instance_count=options.instances,
                class_names=made.class_names,
                imgsz=imgsz,
                cc_model_filenames=cc_model_filenames,
                contract=made.contract,
            )
            if options.ort_tensorrt:
                add_tensorrt_accelerator(
                    config, fp16=options.fp16, workspace_gib=options.workspace_gib
                )
            difference = "" if current is None else io_difference(config, current)
            if difference:
                raise IncompatibleModelError(f"{weights} does not fit {out_dir}: {difference}")
            (staging / CONFIG_FILE).write_bytes(render_config(config))
            manifest = build_manifest(
                version_dir=version_dir,
                model_name=model_name,
                version=version,
                format=spec.name,
                source_weights=weights,
                weights_sha256=made.weights_sha256,
                imgsz=imgsz,
                class_names=made.class_names,
                max_batch_size=options.max_batch,
                inputs=inputs,
                outputs=outputs,
                extra=extra,
            )
            write_manifest(version_dir, manifest)
            _commit(staging, out_dir, version, new_model=current is None)
        except OSError as exc:
            raise ExportError(f"cannot write the export to {out_dir}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return ExportResult(
        model_dir=out_dir,
        version_dir=out_dir / version,
        config=config,
        manifest=manifest,
    )


def _commit(staging: Path, out_dir: Path, version: str, *, new_model: bool) -> None:
    """Move the checked result into place with renames (atomic on one filesystem)."""
    try:
        if not out_dir.exists():
            os.rename(staging, out_dir)
            return
        os.rename(staging / version, out_dir / version)
    except OSError as exc:
        if (out_dir / version).exists():
            raise VersionExistsError(f"{out_dir / version} already exists") from exc
        raise
    if new_model:  # an existing, empty folder: give it its config
        os.replace(staging / CONFIG_FILE, out_dir / CONFIG_FILE)


def export_plan_for_this_gpu(
    weights: Path, out_dir: Path, *, model_name: str, version: str, options: ExportOptions
) -> ExportResult:
    """Build this GPU's plan of ``weights`` and add it to the existing ``out_dir/version``.

    For fleets of several GPU kinds (see ``export.plans``): the same checked export as
    ``export_model``, made in a temporary folder, then merged; ``out_dir`` is unchanged
    when anything fails.
    """
    from export.plans import add_gpu_plan

    if options.format != "plan":
        raise InvalidInputError(f"--add-gpu applies to --format plan, not {options.format}")
    if not (out_dir / version).is_dir():
        raise InvalidInputError(
            f"{out_dir / version} does not exist: export it once without --add-gpu first"
        )
    with tempfile.TemporaryDirectory(prefix="repo-manager-gpu-plan-") as work:
        built = export_model(
            weights,
            Path(work) / model_name,
            model_name=model_name,
            version=version,
            options=options,
        )
        add_gpu_plan(out_dir, version, built.version_dir, built.config)
    return load_exported(out_dir, version)


def load_exported(model_dir: Path, version: str) -> ExportResult:
    """A model folder written by ``export``, checked against its manifest before use."""
    from export.manifest import read_checked_manifest

    version_dir = model_dir / version
    config_path = model_dir / CONFIG_FILE
    if not version_dir.is_dir() or not config_path.is_file():
        raise InvalidInputError(
            f"{model_dir} is not an export of version {version} "
            f"(expected {CONFIG_FILE} and {version}/)"
        )
    manifest = read_checked_manifest(version_dir)
    config = parse_config(config_path.read_bytes(), source=str(config_path))
    return ExportResult(
        model_dir=model_dir, version_dir=version_dir, config=config, manifest=manifest
    )


def stage_exported(source: Path, staged: Path, *, model: str, version: str) -> ExportResult:
    """Copy ``version`` of the export at ``source`` into ``staged`` to publish it as ``model``.

    The copy is checked against the manifest again, so what is published is what was built.
    """
    exported = load_exported(source, version)
    if exported.config.name != model:
        raise InvalidInputError(f"{source} is an export of {exported.config.name!r}, not {model!r}")
    staged.mkdir(parents=True)
    shutil.copy2(source / CONFIG_FILE, staged / CONFIG_FILE)
    shutil.copytree(exported.version_dir, staged / version)
    return load_exported(staged, version)
