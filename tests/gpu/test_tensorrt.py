"""TensorRT plans of a real YOLOv8n, run with the TensorRT runtime, against onnxruntime.

Marked `gpu`: skipped with the reason on machines without a CUDA GPU and TensorRT, run
wherever one is available. Tolerances (documented here, asserted below):
- FP16: boxes within 1.0 px + 1% and class scores within 0.02 of onnxruntime FP32.
- INT8: on anchors onnxruntime scores >= 0.5, median box error <= 4 px and median score
  error <= 0.08 (entropy calibration on 64 generated images).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from export import ExportOptions, export_model
from export.tiny_detector import generate_shapes_dataset, make_untrained_detector

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(3600)]

IMGSZ = 320


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = os.environ.get("REPO_MANAGER_DETECTOR")
    if trained and Path(trained).is_file():
        return Path(trained)
    return make_untrained_detector(tmp_path_factory.mktemp("w") / "yolov8n.pt")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    generate_shapes_dataset(root, 64, imgsz=IMGSZ, seed=3)
    return root / "images"


def _inputs(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)


def plan_of(version: Path) -> Path:
    """The plan file this GPU's export wrote (named after its compute capability)."""
    import json

    manifest = json.loads((version / "manifest.json").read_text())
    return version / manifest["plans"][manifest["compute_capability"]]["file"]


def run_plan(plan: Path, images: np.ndarray) -> np.ndarray:
    from export.tensorrt import PlanRunner

    return PlanRunner(plan)(images)


def run_onnx(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])


def _export(weights: Path, out: Path, **options: object) -> Path:
    result = export_model(
        weights,
        out,
        model_name="m",
        version="1",
        options=ExportOptions(format="plan", imgsz=IMGSZ, max_batch=4, **options),  # type: ignore[arg-type]
    )
    return result.version_dir


@pytest.fixture(scope="module")
def reference(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "m"
    export_model(weights, out, model_name="m", options=ExportOptions(format="onnx", imgsz=IMGSZ))
    return out / "1" / "model.onnx"


def test_fp16_plan_matches_onnxruntime(weights: Path, reference: Path, tmp_path: Path) -> None:
    version = _export(weights, tmp_path / "m", fp16=True, cache_dir=tmp_path / "cache")
    plan = plan_of(version)
    assert plan.read_bytes()[:4] != b'{"de'  # plain plan, no Ultralytics metadata header
    images = _inputs()
    got, want = run_plan(plan, images), run_onnx(reference, images)
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1.0, rtol=1e-2)
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=0.02)


def test_int8_plan_with_calibration_stays_close(
    weights: Path, reference: Path, calibration: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    version = _export(
        weights,
        tmp_path / "m",
        int8=True,
        fp16=True,
        calibration_images=calibration,
        cache_dir=cache,
    )
    assert list(cache.glob("calibration-*.cache")), "calibration cache not written"
    images = _inputs()
    got, want = run_plan(plan_of(version), images), run_onnx(reference, images)
    confident = want[:, 4:].max(axis=1) >= 0.5  # [B, anchors]
    if confident.any():
        box_error = np.abs(got[:, :4] - want[:, :4]).transpose(0, 2, 1)[confident]
        score_error = np.abs(got[:, 4:] - want[:, 4:]).transpose(0, 2, 1)[confident]
        assert float(np.median(box_error)) <= 4.0
        assert float(np.median(score_error)) <= 0.08
    # A second INT8 build reuses the calibration cache instead of recalibrating.
    again = _export(
        weights,
        tmp_path / "m2",
        int8=True,
        fp16=True,
        calibration_images=calibration,
        cache_dir=cache,
    )
    assert plan_of(again).stat().st_size > 0


def test_second_build_with_timing_cache_is_faster(weights: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    started = time.perf_counter()
    _export(weights, tmp_path / "a", fp16=True, cache_dir=cache)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    second = _export(weights, tmp_path / "b", fp16=True, cache_dir=cache)
    warm = time.perf_counter() - started
    import json

    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["timing_cache_reused"] is True
    assert warm < cold, (cold, warm)


def test_plan_manifest_records_tensorrt_and_gpu(weights: Path, tmp_path: Path) -> None:
    import json

    version = _export(weights, tmp_path / "m", fp16=True, cache_dir=tmp_path / "cache")
    manifest = json.loads((version / "manifest.json").read_text())
    for key in ("tensorrt", "gpu", "compute_capability"):
        assert manifest[key], key
    config = (tmp_path / "m" / "config.pbtxt").read_text()
    assert "tensorrt_plan" in config and "KIND_GPU" in config and "cc_model_filenames" in config
