"""YOLO pre- and post-processing in numpy, so a routing client installs without torch.

Mirrors Ultralytics' own steps (letterbox with grey 114 padding split around the centre,
BGR->RGB, /255, CHW; decode ``[B, 4+nc, N]`` of centre-xywh + class scores with no
objectness and class-aware NMS, or read ``[B, K, 6]`` end-to-end detections; boxes mapped
back to the original image), so a model served by Triton gives the boxes ``ultralytics``
would. OpenCV is used for resizing when it is
installed (it is in the ``export`` extra) and a numpy bilinear resize otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "LetterboxInfo",
    "box_iou",
    "decode",
    "decode_end2end",
    "letterbox",
    "match_count",
    "nms",
    "preprocess",
    "resize_bilinear",
    "scale_boxes",
]

PAD_VALUE = 114
#: Offset separating classes in class-aware NMS (Ultralytics' ``max_wh``).
_CLASS_OFFSET = 7680.0
#: At most this many candidates enter NMS (Ultralytics' ``max_nms``): bounds its O(n²).
_MAX_NMS = 30000

_cv2: Any = None
_cv2_checked = False


def _opencv() -> Any:
    """cv2 if importable, else None; imported on first use, never at module import."""
    global _cv2, _cv2_checked
    if not _cv2_checked:
        try:
            import cv2  # type: ignore[import-not-found,unused-ignore]

            _cv2 = cv2
        except ImportError:
            _cv2 = None
        _cv2_checked = True
    return _cv2


@dataclass(kw_only=True, frozen=True)
class LetterboxInfo:
    """How an image was fitted into the model input, to map boxes back."""

    scale: float
    pad_left: int
    pad_top: int
    orig_shape: tuple[int, int]  # (height, width) of the original image


def resize_bilinear(image: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Bilinear resize with OpenCV's half-pixel-centre convention, in plain numpy."""
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (height, width):
        return image.copy()

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        lo = np.floor(src).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(height, in_h)
    x0, x1, wx = axis(width, in_w)
    img = image.astype(np.float32)
    wy3 = wy[:, None, None]
    rows = img[y0] * (1.0 - wy3) + img[y1] * wy3
    wx3 = wx[None, :, None]
    out = rows[:, x0] * (1.0 - wx3) + rows[:, x1] * wx3
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize(image: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    cv2 = _opencv()
    if cv2 is not None:
        return np.asarray(
            cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
        )
    return resize_bilinear(image, height, width)


def letterbox(
    image: npt.NDArray[np.uint8], size: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], LetterboxInfo]:
    """Fit ``image`` (HxWxC) into ``size`` (height, width) keeping aspect, pad with grey."""
    h, w = image.shape[:2]
    out_h, out_w = size
    scale = min(out_h / h, out_w / w)
    new_w, new_h = round(w * scale), round(h * scale)
    dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
    # Ultralytics' rounding: an odd padding puts the extra pixel right/bottom.
    top, left = round(dh - 0.1), round(dw - 0.1)
    resized = image if (new_h, new_w) == (h, w) else _resize(image, new_h, new_w)
    canvas = np.full((out_h, out_w, image.shape[2]), PAD_VALUE, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, LetterboxInfo(scale=scale, pad_left=left, pad_top=top, orig_shape=(h, w))


def preprocess(
    image: npt.NDArray[np.uint8], size: tuple[int, int], dtype: npt.DTypeLike = np.float32
) -> tuple[np.ndarray, LetterboxInfo]:
    """BGR HxWx3 uint8 -> the model's ``[1, 3, H, W]`` RGB tensor in [0, 1]."""
    padded, info = letterbox(image, size)
    chw = padded[..., ::-1].transpose(2, 0, 1)
    tensor = np.ascontiguousarray(chw[None], dtype=np.float32) * np.float32(1.0 / 255.0)
    return tensor.astype(dtype, copy=False), info


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression on xyxy boxes; indices kept, best score first."""
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def decode(
    output: np.ndarray,
    *,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``[B, 4+nc, N]`` raw YOLOv8 output -> per image (boxes xyxy, scores, class_ids).

    Boxes stay in model-input (letterboxed) pixels; ``scale_boxes`` maps them back.
    """
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 2:
        pred = pred[None]
    if pred.ndim != 3 or pred.shape[1] < 5:
        raise ValueError(f"expected YOLOv8 output [B, 4+nc, N], got shape {pred.shape}")
    results = []
    for image_pred in pred:
        rows = image_pred.T  # [N, 4+nc]
        class_scores = rows[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(rows.shape[0]), class_ids]
        mask = scores > conf
        rows, scores, class_ids = rows[mask], scores[mask], class_ids[mask]
        if scores.size > _MAX_NMS:
            top = np.argsort(-scores, kind="stable")[:_MAX_NMS]
            rows, scores, class_ids = rows[top], scores[top], class_ids[top]
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        offset = class_ids[:, None].astype(np.float32) * _CLASS_OFFSET
        keep = nms(boxes + offset, scores, iou)[:max_det]
        results.append(
            (
                boxes[keep].astype(np.float32),
                scores[keep].astype(np.float32),
                class_ids[keep].astype(np.int64),
            )
        )
    return results


def decode_end2end(
    output: np.ndarray, *, conf: float = 0.25, max_det: int = 300
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``[B, K, 6]`` end-to-end detections (x1, y1, x2, y2, score, class; best first, zero
    rows after the last) -> per image (boxes xyxy, scores, class_ids) above ``conf``, at
    most ``max_det``: what Ultralytics does with an end-to-end model's answer (no NMS).

    Boxes stay in model-input (letterboxed) pixels; ``scale_boxes`` maps them back.
    """
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 2:
        pred = pred[None]
    if pred.ndim != 3 or pred.shape[2] != 6:
        raise ValueError(f"expected end-to-end output [B, K, 6], got shape {pred.shape}")
    results = []
    for rows in pred:
        kept = rows[rows[:, 4] > conf][:max_det]
        results.append(
            (
                np.ascontiguousarray(kept[:, :4], dtype=np.float32),
                np.ascontiguousarray(kept[:, 4], dtype=np.float32),
                kept[:, 5].astype(np.int64),
            )
        )
    return results


def scale_boxes(boxes: np.ndarray, info: LetterboxInfo) -> npt.NDArray[np.float32]:
    """Map xyxy boxes from letterboxed input pixels back to the original image, clipped."""
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    out[:, [0, 2]] -= info.pad_left
    out[:, [1, 3]] -= info.pad_top
    out /= info.scale
    h, w = info.orig_shape
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of every xyxy box in ``a`` ([N, 4]) with every one in ``b`` ([M, 4]): [N, M]."""
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    iou: npt.NDArray[np.float64] = np.divide(
        inter, union, out=np.zeros_like(inter), where=union > 0
    )
    return iou


def match_count(
    reference: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    iou_threshold: float = 0.5,
) -> int:
    """Boxes of ``other`` (boxes, scores, classes) that match a ``reference`` box one to one.

    Greedy in ``other``'s score order, same class, IoU >= threshold: how shadow traffic
    counts agreement of a canary's detections with stable's (no AP here: no torch).
    """
    ref_boxes, ref_cls = reference
    boxes, scores, classes = other
    if len(ref_cls) == 0 or len(classes) == 0:
        return 0
    iou = box_iou(ref_boxes, boxes)
    iou[np.asarray(ref_cls)[:, None] != np.asarray(classes)[None, :]] = 0.0
    taken = np.zeros(len(ref_cls), dtype=bool)
    matched = 0
    for j in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(taken, 0.0, iou[:, j])
        i = int(candidates.argmax())
        if candidates[i] >= iou_threshold:
            taken[i] = True
            matched += 1
    return matched
