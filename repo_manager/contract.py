"""The served contract of a model: what its output tensor means, the same for every version.

One ``config.pbtxt`` serves every version of a model, so every version must answer with the
same output shape. Two contracts:

``raw``       ``[B, 4 + nc, N]``: centre-xywh and class scores per anchor, no NMS (the client
              decodes and runs NMS). What every model published before contracts existed
              serves, and keeps serving: a config without the ``contract`` parameter is raw.
              Its shape grows with the class count and the anchors, so a version with
              another class count cannot stand beside the others.
``end2end``   ``[B, K, 6]``: ``x1, y1, x2, y2, score, class`` per detection, best first, rows
              after the last detection all zero; K = min(300, anchors). Every generation
              produces it: YOLOv10 and YOLO26 through their one-to-one (NMS-free) head,
              every other generation with NMS inside the exported graph. The shape does not
              depend on the class count or on the generation, so a YOLO26 canary of a
              YOLOv8 model, or a version that adds a class, fits the model's config.

``end2end`` is the default of a new model: the answer is 7.2 KB per image instead of
2.8 MB for an 80-class model at 640 px (``bytes_per_image``), and no client runs NMS.
A model keeps its contract: a version exported into another one is refused in one line
(publish it under a new model name).

The graph's NMS keeps every candidate above ``END2END_CONF_FLOOR`` (``yolo val``'s
confidence, so the golden gate's mAP reads the full curve) at IoU ``END2END_IOU``
(Ultralytics' predict default); a client filters at its own confidence. A box above a
client's threshold is only ever suppressed by a higher-scored box, so filtering the graph's
answer at 0.25 gives what NMS at 0.25 gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from repo_manager.errors import InvalidInputError

__all__ = [
    "CONTRACTS",
    "CONTRACT_PARAMETER",
    "DEFAULT_CONTRACT",
    "END2END",
    "END2END_CONF_FLOOR",
    "END2END_IOU",
    "END2END_ROW",
    "HEAD_MODES",
    "MAX_DETECTIONS",
    "NMS_IN_GRAPH",
    "ONE2MANY",
    "ONE2ONE",
    "RAW",
    "anchors_of",
    "bytes_per_image",
    "check_contract",
    "contract_of",
    "end2end_detections",
    "head_mode",
    "output_dims",
]

RAW = "raw"
END2END = "end2end"
CONTRACTS = (RAW, END2END)
#: A new model's contract (a model keeps the one its first version set).
DEFAULT_CONTRACT = END2END
#: The config parameter that states a model's contract (absent: ``raw``).
CONTRACT_PARAMETER = "contract"

#: Detections per image of the end-to-end contract (Ultralytics' ``max_det``), at most.
MAX_DETECTIONS = 300
#: Values per end-to-end detection: x1, y1, x2, y2, score, class.
END2END_ROW = 6
#: Candidates the graph's NMS keeps (``yolo val``'s confidence) and its IoU threshold
#: (Ultralytics' predict and NMS-export default).
END2END_CONF_FLOOR = 0.001
END2END_IOU = 0.7

#: How a version's graph is made (Ultralytics' ``nms`` export argument picks the head):
#: the one-to-many head, NMS outside (``nms=None``: the raw contract);
ONE2MANY = "one2many"
#: the one-to-one head of YOLOv10/YOLO26, no NMS at all (``nms=False``);
ONE2ONE = "one2one"
#: the one-to-many head with NMS inside the graph (``nms=True``).
NMS_IN_GRAPH = "nms"
HEAD_MODES = (ONE2MANY, ONE2ONE, NMS_IN_GRAPH)


def check_contract(name: str) -> str:
    """One of ``CONTRACTS``, or one line saying which there are."""
    if name not in CONTRACTS:
        raise InvalidInputError(f"contract must be one of {', '.join(CONTRACTS)}, not {name!r}")
    return name


def contract_of(config: Any) -> str:
    """The contract a model config states (a ``ModelConfig``); ``raw`` when it states none,
    as every config written before contracts existed."""
    parameters = config.parameters
    if CONTRACT_PARAMETER not in parameters:
        return RAW
    return check_contract(parameters[CONTRACT_PARAMETER].string_value)


def head_mode(contract: str, *, has_one2one_head: bool) -> str:
    """How a generation is exported into ``contract``: the raw contract always takes the
    one-to-many head; the end-to-end one takes the one-to-one head where the model has one
    (YOLOv10, YOLO26), else NMS inside the graph."""
    if check_contract(contract) == RAW:
        return ONE2MANY
    return ONE2ONE if has_one2one_head else NMS_IN_GRAPH


def end2end_detections(num_anchors: int) -> int:
    """K of ``[B, K, 6]``: Ultralytics clamps ``max_det`` to the anchors of the input."""
    return min(MAX_DETECTIONS, int(num_anchors))


def output_dims(contract: str, *, num_classes: int, num_anchors: int) -> tuple[int, int]:
    """The output's dims without the batch: ``(4 + nc, N)`` raw, ``(K, 6)`` end-to-end."""
    if check_contract(contract) == RAW:
        return (4 + int(num_classes), int(num_anchors))
    return (end2end_detections(num_anchors), END2END_ROW)


def anchors_of(imgsz: int, strides: Sequence[int] = (8, 16, 32)) -> int:
    """Anchor points of a square input: one per cell of each stride's grid."""
    return sum((int(imgsz) // int(stride)) ** 2 for stride in strides)


def bytes_per_image(contract: str, *, num_classes: int, imgsz: int) -> int:
    """FP32 output bytes of one image (e.g. 80 classes at 640 px: raw 2,822,400, end2end
    7,200)."""
    rows, columns = output_dims(contract, num_classes=num_classes, num_anchors=anchors_of(imgsz))
    return rows * columns * 4
