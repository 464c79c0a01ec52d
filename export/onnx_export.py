"""PyTorch detector -> ONNX with a dynamic batch, and the checks every ONNX must pass.

Ultralytics' exporter makes batch *and* image size dynamic or neither; Triton needs a
dynamic batch (for ``max_batch_size`` and dynamic batching) and benefits from fixed
spatial dims (the config states them, TensorRT profiles and shape inference stay simple).
So the model is exported with everything dynamic and the spatial dims are then pinned
to ``imgsz`` in the graph's inputs and outputs.

``check_onnx`` is the gate between an export and the repository: the graph must be valid,
have exactly the detector's input and output (names, types, shapes), run in onnxruntime
and agree numerically with the PyTorch model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repo_manager.errors import ExportError
from repo_manager.modelconfig import TensorSpec

if TYPE_CHECKING:
    import torch

    from export.weights import LoadedDetector

__all__ = [
    "BOX_ATOL_PX",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RTOL",
    "SCORE_ATOL",
    "DetectorIO",
    "NumericalCheck",
    "check_onnx",
    "export_onnx",
    "pytorch_reference",
    "read_io",
]

INPUT_NAME = "images"
OUTPUT_NAME = "output0"

# Tolerances of the ONNX-vs-PyTorch comparison (FP32 on CPU; the graph is fused, the
# reference is not, so tiny differences are expected): an element passes when
# |onnx - torch| <= atol + RTOL * |torch|. Box rows are pixel coordinates (xywh at
# imgsz), score rows are sigmoid outputs in [0, 1].
BOX_ATOL_PX = 1e-2
SCORE_ATOL = 1e-4
RTOL = 1e-3

# ONNX TensorProto element types -> Triton DataType names (the ones a detector can use).
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}


@dataclass(kw_only=True, frozen=True)
class DetectorIO:
    """What a YOLOv8 detector's graph must expose: images in, [B, 4 + nc, anchors] out."""

    imgsz: int
    num_classes: int
    num_anchors: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    @property
    def input_spec(self) -> TensorSpec:
        return TensorSpec(
            name=self.input_name, data_type="TYPE_FP32", dims=(3, self.imgsz, self.imgsz)
        )

    @property
    def output_spec(self) -> TensorSpec:
        return TensorSpec(
            name=self.output_name,
            data_type="TYPE_FP32",
            dims=(4 + self.num_classes, self.num_anchors),
        )


@dataclass(kw_only=True, frozen=True)
class NumericalCheck:
    """The largest ONNX-vs-PyTorch differences seen on the sample batch."""

    batch: int
    max_abs_diff_boxes: float
    max_abs_diff_scores: float


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """Keep Ultralytics' banner and advice out of our output; our own checks decide.

    Its warnings during export are advice for its own users (e.g. that a YOLOv8 head has
    no one-to-one branch), noise on every export here; errors still show.
    """
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(detector: LoadedDetector, dest: Path, *, imgsz: int, opset: int | None) -> None:
    """Export ``detector`` to ``dest`` (dynamic batch, spatial dims fixed to ``imgsz``).

    Ultralytics writes its file beside the detector's private copy, never beside the
    user's weights; nothing here needs the network (no onnxslim, no downloads).
    """
    import onnx
    from onnx.tools import update_model_dims
    from ultralytics.engine.exporter import Exporter

    overrides: dict[str, Any] = {
        "mode": "export",
        "format": "onnx",
        "imgsz": imgsz,
        "batch": 1,
        "data": None,
        "device": "cpu",
        "verbose": False,
        "dynamic": True,
        "simplify": False,  # onnxslim would be auto-installed from the network
        "half": False,
        "nms": False,
        "opset": opset,
    }
    try:
        with _quiet_ultralytics():
            produced = Path(Exporter(overrides=overrides)(model=detector.model))
        graph = onnx.load(str(produced))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ExportError(f"ONNX export of {detector.source} failed: {detail}") from exc

    num_anchors = detector.num_anchors(imgsz)
    input_names = [i.name for i in graph.graph.input]
    output_names = [o.name for o in graph.graph.output]
    if input_names != [INPUT_NAME] or output_names != [OUTPUT_NAME]:
        raise ExportError(
            f"ONNX export of {detector.source} has inputs {input_names} and outputs "
            f"{output_names}, expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
        )
    fixed = update_model_dims.update_inputs_outputs_dims(
        graph,
        {INPUT_NAME: ["batch", 3, imgsz, imgsz]},
        {OUTPUT_NAME: ["batch", 4 + detector.num_classes, num_anchors]},
    )
    onnx.save(fixed, str(dest))


def pytorch_reference(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy-in, numpy-out call of the PyTorch detector (its first output)."""
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(batch))
        if isinstance(out, list | tuple):
            out = out[0]
        result: np.ndarray = out.detach().cpu().float().numpy()
        return result

    return run


def _dims(value_info: Any) -> list[int | str | None]:
    """A tensor's dims: an int when static, its symbol (or None) when dynamic."""
    dims: list[int | str | None] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return dims


def _spec(value_info: Any, *, where: str) -> TensorSpec:
    """A graph input/output as a Triton TensorSpec (the dynamic batch dim dropped)."""
    elem = value_info.type.tensor_type.elem_type
    if elem not in _ONNX_TO_TRITON:
        raise ExportError(f"{where}: tensor {value_info.name!r} has unsupported type {elem}")
    dims = _dims(value_info)
    if not dims or isinstance(dims[0], int):
        raise ExportError(
            f"{where}: tensor {value_info.name!r} has dims {dims}; its first dim must be "
            "a dynamic batch"
        )
    rest = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ExportError(
            f"{where}: tensor {value_info.name!r} has dims {dims}; only the batch may be dynamic"
        )
    return TensorSpec(
        name=value_info.name,
        data_type=_ONNX_TO_TRITON[elem],
        dims=tuple(int(d) for d in rest if isinstance(d, int)),
    )


def read_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's real inputs and outputs as Triton specs: the config is built from them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [_spec(v, where=str(path)) for v in graph.input if v.name not in initializers]
    outputs = [_spec(v, where=str(path)) for v in graph.output]
    return inputs, outputs


def _compare(got: np.ndarray, want: np.ndarray, *, atol: float, what: str, where: str) -> float:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    allowed = atol + RTOL * np.abs(want.astype(np.float64))
    if not np.all(np.isfinite(got)) or np.any(diff > allowed):
        worst = float(np.nanmax(diff)) if diff.size else 0.0
        raise ExportError(
            f"{where}: onnxruntime {what} differ from PyTorch (max abs diff {worst:.3g}, "
            f"tolerance {atol:g} + {RTOL:g}*|x|)"
        )
    return float(diff.max()) if diff.size else 0.0


def check_onnx(
    path: Path,
    *,
    expected: DetectorIO,
    reference: Callable[[np.ndarray], np.ndarray] | None,
    batch: int = 2,
    seed: int = 0,
) -> NumericalCheck | None:
    """Refuse an ONNX file that is not exactly the expected detector.

    Checks, in order: the ONNX checker (with shape inference); the graph's only input and
    output match ``expected`` (names, FP32, dims, dynamic batch); onnxruntime runs a
    random batch of ``batch`` images and returns [batch, 4 + nc, anchors]; and, when
    ``reference`` is given, the outputs match it within ``BOX_ATOL_PX``/``SCORE_ATOL`` +
    ``RTOL``·|reference|. Any failure raises ``ExportError`` naming the file.
    """
    import onnx
    import onnxruntime as ort

    where = str(path)
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph, full_check=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ExportError(f"{where}: not a valid ONNX model: {detail}") from exc

    inputs, outputs = read_io(path)
    want_in, want_out = [expected.input_spec], [expected.output_spec]
    if inputs != want_in:
        raise ExportError(
            f"{where}: inputs {_describe(inputs)} differ from the expected {_describe(want_in)}"
        )
    if outputs != want_out:
        raise ExportError(
            f"{where}: outputs {_describe(outputs)} differ from the expected {_describe(want_out)}"
        )

    sample = np.random.default_rng(seed).random(
        (batch, 3, expected.imgsz, expected.imgsz), dtype=np.float32
    )
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run([expected.output_name], {expected.input_name: sample})
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ExportError(f"{where}: onnxruntime cannot run the model: {detail}") from exc
    want_shape = (batch, *expected.output_spec.dims)
    if tuple(got.shape) != want_shape:
        raise ExportError(
            f"{where}: onnxruntime returned shape {tuple(got.shape)}, expected {want_shape}"
        )
    if reference is None:
        return None
    want = reference(sample)
    if tuple(want.shape) != want_shape:
        raise ExportError(
            f"{where}: PyTorch returned shape {tuple(want.shape)}, expected {want_shape}"
        )
    box_diff = _compare(got[:, :4], want[:, :4], atol=BOX_ATOL_PX, what="boxes", where=where)
    score_diff = _compare(got[:, 4:], want[:, 4:], atol=SCORE_ATOL, what="scores", where=where)
    return NumericalCheck(batch=batch, max_abs_diff_boxes=box_diff, max_abs_diff_scores=score_diff)


def _describe(specs: list[TensorSpec]) -> str:
    return "[" + ", ".join(f"{s.name} {s.data_type} {list(s.dims)}" for s in specs) + "]"
