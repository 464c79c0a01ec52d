"""ONNX -> TensorRT plan with the TensorRT Python builder API (``--format plan``).

A plan only loads on the TensorRT version and GPU compute capability it was built with,
so it is built on the GPU machine (or the TensorRT image of the same release as the
serving Triton) and both are recorded in the manifest. What the build does:

- an optimization profile whose max batch covers ``max_batch_size`` (min 1, opt half);
- FP16 and/or INT8 (entropy calibration from a folder of images; the calibration cache
  is reused when the same ONNX and images are calibrated again);
- a workspace limit and a timing cache file reused across builds (a second build of the
  same network skips most tactic timing);
- a progress display on stderr (TensorRT's ``IProgressMonitor``);
- the plan is written plainly (not Ultralytics' ``.engine`` with its JSON header, which
  Triton rejects), then deserialized again and its IO checked against the ONNX.

On a machine without a GPU or TensorRT the export stops at once with one line.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repo_manager.errors import ExportError

__all__ = [
    "PlanBuild",
    "PlanRunner",
    "build_plan",
    "check_tensorrt_version",
    "require_tensorrt",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SUPPORTED_TENSORRT_MAJOR = "10"


def require_tensorrt() -> dict[str, Any]:
    """TensorRT version and GPU of this machine, or ``ExportError`` when either is missing."""
    import torch

    if not torch.cuda.is_available():
        raise ExportError(
            "--format plan needs an NVIDIA GPU with TensorRT; this machine has no GPU"
        )
    try:
        import tensorrt
    except ImportError as exc:
        raise ExportError(
            "--format plan needs TensorRT; the 'tensorrt' package is not installed "
            "(pip install 'repo-manager[trt]')"
        ) from exc
    check_tensorrt_version(str(tensorrt.__version__))
    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt": str(tensorrt.__version__),
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
    }


def check_tensorrt_version(version: str) -> None:
    """Refuse a TensorRT other than 10.x, the only major this builder is written for.

    Every Triton release in ``repo_manager.compat`` ships TensorRT 10, and TensorRT 11
    removed what the build relies on: implicit INT8 calibration (``IInt8EntropyCalibrator2``,
    ``config.int8_calibrator``, ``set_calibration_profile``) and the ``FP16``/``INT8`` builder
    flags (every network is strongly typed). Checked by the symbols of the 10.3 and 11.4
    Python bindings.
    """
    major = version.split(".", 1)[0]
    if major != SUPPORTED_TENSORRT_MAJOR:
        raise ExportError(
            f"TensorRT {version} is not supported: --format plan needs TensorRT "
            f"{SUPPORTED_TENSORRT_MAJOR}.x (the TensorRT image of the serving Triton's release)"
        )


@dataclass(kw_only=True)
class PlanBuild:
    """How to build one plan."""

    imgsz: int
    max_batch: int
    fp16: bool = False
    int8: bool = False
    #: Folder of images for INT8 calibration (required with ``int8``).
    calibration_images: Path | None = None
    #: Where the timing cache and calibration caches live. Default: ~/.cache/repo-manager/tensorrt
    cache_dir: Path | None = None
    #: Builder workspace limit in GiB. Default 4.
    workspace_gib: float = 4.0
    #: Images used for calibration at most. Default 256.
    calibration_limit: int = 256
    #: Show build progress on stderr. Default True.
    progress: bool = True

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or Path.home() / ".cache" / "repo-manager" / "tensorrt"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def calibration_batches(folder: Path, *, imgsz: int, batch: int, limit: int) -> list[np.ndarray]:
    """Letterboxed NCHW float32 batches of the folder's images (as the Router feeds them)."""
    import cv2

    from repo_manager import yolo

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ExportError(f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    tensors = []
    for path in paths:
        image = cv2.imread(str(path))
        if image is None:
            raise ExportError(f"cannot read calibration image {path}")
        tensor, _ = yolo.preprocess(np.asarray(image, dtype=np.uint8), (imgsz, imgsz))
        tensors.append(tensor[0])
    usable = len(tensors) - len(tensors) % batch or len(tensors)
    stacked = np.stack(tensors[:usable]).astype(np.float32)
    return [stacked[i : i + batch] for i in range(0, len(stacked), batch)]


def _calibration_key(onnx_path: Path, batches: list[np.ndarray]) -> str:
    digest = hashlib.sha256(onnx_path.read_bytes())
    for batch in batches:
        digest.update(batch.tobytes())
    return digest.hexdigest()[:20]


def _calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``batches`` from GPU memory (torch tensors)."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = iter(batches)
            self.device: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.device = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            _write_atomic(cache_path, bytes(cache))

    return EntropyCalibrator()


def _progress_monitor(trt: Any) -> Any:
    """A TensorRT progress monitor printing each build phase's progress on stderr."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            sys.stderr.write(f"  tensorrt: {phase_name} ({num_steps} steps)\n")

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self.steps.get(phase_name, 0)
            if total > 1:
                sys.stderr.write(f"\r  tensorrt: {phase_name} {step + 1}/{total}")
                if step + 1 >= total:
                    sys.stderr.write("\n")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Progress()


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    return network, parser


def _check_engine(trt: Any, logger: Any, plan: bytes, network: Any) -> None:
    """Deserialize the written plan and compare its IO with the network it came from."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise ExportError("the built TensorRT plan does not deserialize")
    expected = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        expected[tensor.name] = ("input", tuple(tensor.shape))
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        expected[tensor.name] = ("output", tuple(tensor.shape))
    found = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        found[name] = (mode, tuple(engine.get_tensor_shape(name)))
    if found != expected:
        raise ExportError(f"TensorRT plan IO {found} differs from the ONNX network's {expected}")


def build_plan(onnx_path: Path, plan_path: Path, build: PlanBuild) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path``; returns the manifest fields of the build."""
    machine = require_tensorrt()
    import tensorrt as trt

    if build.int8 and build.calibration_images is None:
        raise ExportError("--int8 needs --calibration-images DIR (a folder of sample images)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_gib * (1 << 30)))

    if network.num_inputs != 1:
        raise ExportError(f"expected one input, the ONNX has {network.num_inputs}")
    image = network.get_input(0)
    chw = (3, build.imgsz, build.imgsz)
    profile = builder.create_optimization_profile()
    opt = max(1, build.max_batch // 2)
    profile.set_shape(image.name, (1, *chw), (opt, *chw), (build.max_batch, *chw))
    config.add_optimization_profile(profile)

    cache_dir = build.resolved_cache_dir()
    timing_cache_path = (
        cache_dir / f"timing-{machine['tensorrt']}-sm{machine['compute_capability']}.cache"
    )
    cached = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cached)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    precision = ["fp32"]
    if build.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        precision.append("fp16")
    calibration_cache: Path | None = None
    if build.int8:
        assert build.calibration_images is not None
        batches = calibration_batches(
            build.calibration_images,
            imgsz=build.imgsz,
            batch=min(8, build.max_batch),
            limit=build.calibration_limit,
        )
        calibration_cache = cache_dir / f"calibration-{_calibration_key(onnx_path, batches)}.cache"
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        shape = (batches[0].shape[0], *chw)
        calib_profile.set_shape(image.name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _calibrator(trt, batches, calibration_cache)
        precision.append("int8")
    if build.progress:
        config.progress_monitor = _progress_monitor(trt)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan = bytes(serialized)
    _write_atomic(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    plan_path.write_bytes(plan)  # a plain plan: what Triton's tensorrt_plan platform loads
    _check_engine(trt, logger, plan, network)
    return {
        **machine,
        "precision": precision,
        "build_seconds": round(seconds, 3),
        "timing_cache": str(timing_cache_path),
        "timing_cache_reused": bool(cached),
        "calibration_cache": str(calibration_cache) if calibration_cache else None,
        "workspace_gib": build.workspace_gib,
        "max_batch_size": build.max_batch,
    }


class PlanRunner:
    """Runs a plan in-process with the TensorRT runtime (for checks and benchmarks).

    The engine and context are made once; each call copies the batch to the GPU, runs
    it on a CUDA stream and copies the first output back.
    """

    def __init__(self, plan_path: Path) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"{plan_path} does not deserialize with this TensorRT")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        self.input = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        device_in = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.input, tuple(images.shape))
        self.context.set_tensor_address(self.input, device_in.data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output))
        device_out = torch.empty(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.output, device_out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        self.stream.synchronize()
        return np.asarray(device_out.cpu().numpy())
