"""PyTorch detector -> ONNX with a dynamic batch, and the checks every ONNX must pass.

Ultralytics' exporter makes batch *and* image size dynamic or neither; Triton needs a
dynamic batch (for ``max_batch_size`` and dynamic batching) and benefits from fixed
spatial dims (the config states them, TensorRT profiles and shape inference stay simple).
So the model is exported with everything dynamic and the spatial dims are then pinned
to ``imgsz`` in the graph's inputs and outputs.

The head mode (``repo_manager.contract``) picks what the graph answers: Ultralytics'
``nms`` export argument selects the head (None: one-to-many, raw ``[B, 4+nc, N]``;
False: the one-to-one head of YOLOv10/YOLO26, ``[B, K, 6]``; True: NMS inside the graph,
``[B, K, 6]`` for every generation).

``check_onnx`` is the gate between an export and the repository: the graph must be valid,
have exactly the detector's input and output (names, types, shapes), run in onnxruntime
and agree numerically with the PyTorch model (in the same head mode).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.numerical import (
    BOX_ATOL_PX,
    EDGE_MARGIN,
    RTOL,
    SCORE_ATOL,
    compare_arrays,
    compare_detections,
)
from repo_manager.contract import (
    END2END,
    END2END_CONF_FLOOR,
    END2END_IOU,
    NMS_IN_GRAPH,
    ONE2ONE,
    RAW,
    end2end_detections,
    output_dims,
)
from repo_manager.errors import ExportError
from repo_manager.modelconfig import TensorSpec

if TYPE_CHECKING:
    from export.weights import LoadedDetector

__all__ = [
    "BOX_ATOL_PX",
    "EDGE_MARGIN",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RTOL",
    "SCORE_ATOL",
    "DetectorIO",
    "NumericalCheck",
    "check_onnx",
    "compare_detections",
    "export_onnx",
    "onnx_session",
    "pytorch_reference",
    "read_io",
]

INPUT_NAME = "images"
OUTPUT_NAME = "output0"

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
    """What a YOLO detector's graph must expose: images in, and out ``[B, 4 + nc, anchors]``
    (raw contract) or ``[B, K, 6]`` detections (end-to-end contract)."""

    imgsz: int
    num_classes: int
    num_anchors: int
    contract: str = RAW
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    @property
    def input_spec(self) -> TensorSpec:
        return TensorSpec(
            name=self.input_name, data_type="TYPE_FP32", dims=(3, self.imgsz, self.imgsz)
        )

    @property
    def output_spec(self) -> TensorSpec:
        dims = output_dims(
            self.contract, num_classes=self.num_classes, num_anchors=self.num_anchors
        )
        return TensorSpec(name=self.output_name, data_type="TYPE_FP32", dims=dims)


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


def _head_overrides(head_mode: str, *, max_batch: int, num_anchors: int) -> dict[str, Any]:
    """Ultralytics export arguments of a head mode (its ``nms`` argument picks the head)."""
    if head_mode == ONE2ONE:
        return {"nms": False, "max_det": end2end_detections(num_anchors)}
    if head_mode == NMS_IN_GRAPH:
        # NMSModel unrolls its per-image loop over ``batch`` images at trace time: a dynamic
        # graph serves batches up to the one it was traced at, so trace at the max batch.
        return {
            "nms": True,
            "conf": END2END_CONF_FLOOR,
            "iou": END2END_IOU,
            "max_det": end2end_detections(num_anchors),
            "batch": max(1, max_batch),
        }
    return {"nms": None}


def export_onnx(
    detector: LoadedDetector,
    dest: Path,
    *,
    imgsz: int,
    opset: int | None,
    head_mode: str,
    max_batch: int,
) -> None:
    """Export ``detector`` to ``dest`` (dynamic batch, spatial dims fixed to ``imgsz``) in
    ``head_mode`` (``repo_manager.contract``; ``max_batch``: the largest batch an NMS graph
    serves).

    Ultralytics writes its file beside the detector's private copy, never beside the
    user's weights; nothing here needs the network (no onnxslim, no downloads).
    """
    import onnx
    from onnx.tools import update_model_dims
    from ultralytics.engine.exporter import Exporter

    num_anchors = detector.num_anchors(imgsz)
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
        "opset": opset,
        **_head_overrides(head_mode, max_batch=max_batch, num_anchors=num_anchors),
    }
    try:
        with _quiet_ultralytics():
            produced = Path(Exporter(overrides=overrides)(model=detector.model))
        graph = onnx.load(str(produced))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ExportError(f"ONNX export of {detector.source} failed: {detail}") from exc

    contract = RAW if head_mode not in (ONE2ONE, NMS_IN_GRAPH) else END2END
    dims = output_dims(contract, num_classes=detector.num_classes, num_anchors=num_anchors)
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
        {OUTPUT_NAME: ["batch", *dims]},
    )
    onnx.save(fixed, str(dest))


def pytorch_reference(
    detector: LoadedDetector, *, head_mode: str, imgsz: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy-in, numpy-out call of the PyTorch detector in ``head_mode``: what its ONNX
    must answer (the unfused model: the check covers Ultralytics' fusion too)."""
    import torch

    model: Any = detector.model
    if detector.has_one2one_head:
        model.end2end = head_mode == ONE2ONE  # the head the export selected
    head = model.model[-1]
    head.max_det = end2end_detections(detector.num_anchors(imgsz))
    runner: Any = model
    if head_mode == NMS_IN_GRAPH:
        from types import SimpleNamespace

        from ultralytics.engine.exporter import NMSModel

        head.xyxy = True  # what the exporter sets for NMS inside the graph
        args = SimpleNamespace(
            conf=END2END_CONF_FLOOR,
            iou=END2END_IOU,
            max_det=head.max_det,
            agnostic_nms=False,
            dynamic=False,
            batch=1,
            format="onnx",
        )
        runner = NMSModel(model, args)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = runner(torch.from_numpy(batch))
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


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session that prints only errors: its warnings (e.g. about unused
    initializers of an exported graph) are colour-coded lines for its developers, printed
    before our own one-line verdict."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors and fatal only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


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
    random batch of ``batch`` images and returns the contract's shape; and, when
    ``reference`` is given, the outputs match it: a raw output element by element within
    ``BOX_ATOL_PX``/``SCORE_ATOL`` + ``RTOL``·|reference|, end-to-end detections row by row
    (``compare_detections``). Any failure raises ``ExportError`` naming the file.
    """
    import onnx

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
        (got,) = onnx_session(path).run([expected.output_name], {expected.input_name: sample})
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
    if expected.contract == END2END:
        box_diff, score_diff = compare_detections(got, want, where=where)
    else:
        boxes, scores = (got[:, :4], want[:, :4]), (got[:, 4:], want[:, 4:])
        box_diff = compare_arrays(*boxes, atol=BOX_ATOL_PX, what="boxes", where=where)
        score_diff = compare_arrays(*scores, atol=SCORE_ATOL, what="scores", where=where)
    return NumericalCheck(batch=batch, max_abs_diff_boxes=box_diff, max_abs_diff_scores=score_diff)


def _describe(specs: list[TensorSpec]) -> str:
    return "[" + ", ".join(f"{s.name} {s.data_type} {list(s.dims)}" for s in specs) + "]"
