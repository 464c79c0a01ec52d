"""How close onnxruntime must be to PyTorch, and the comparisons that say so.

Split from ``onnx_export`` (the export and its checks) so that each stays one job: this
module holds only the tolerances and the two comparisons ``check_onnx`` uses, a raw output
element by element and end-to-end detections as sets per image.
"""

from __future__ import annotations

import numpy as np

from repo_manager.contract import END2END_CONF_FLOOR, END2END_IOU
from repo_manager.errors import ExportError

__all__ = [
    "BOX_ATOL_PX",
    "EDGE_MARGIN",
    "NMS_TIE_MARGIN",
    "RTOL",
    "SCORE_ATOL",
    "compare_arrays",
    "compare_detections",
]

# Tolerances of the ONNX-vs-PyTorch comparison (FP32 on CPU; the graph is fused, the
# reference is not, so tiny differences are expected): an element passes when
# |onnx - torch| <= atol + RTOL * |torch|. Box rows are pixel coordinates (xywh at
# imgsz), score rows are sigmoid outputs in [0, 1].
BOX_ATOL_PX = 1e-2
SCORE_ATOL = 1e-4
RTOL = 1e-3


def compare_arrays(
    got: np.ndarray, want: np.ndarray, *, atol: float, what: str, where: str
) -> float:
    """``got`` within ``atol`` + ``RTOL``·|want| of ``want`` everywhere; returns the largest
    difference, or raises ``ExportError`` naming ``where`` and ``what``."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    allowed = atol + RTOL * np.abs(want.astype(np.float64))
    if not np.all(np.isfinite(got)) or np.any(diff > allowed):
        worst = float(np.nanmax(diff)) if diff.size else 0.0
        raise ExportError(
            f"{where}: onnxruntime {what} differ from PyTorch (max abs diff {worst:.3g}, "
            f"tolerance {atol:g} + {RTOL:g}*|x|)"
        )
    return float(diff.max()) if diff.size else 0.0


#: Score margin of the end-to-end comparison's edge: a detection this close to the lowest
#: score a list holds (the confidence floor, or the K-th score of a full list) may be in
#: one list and not the other, as rounding decides.
EDGE_MARGIN = 1e-3
#: IoU margin of an NMS near-tie: a box whose IoU with a higher-scored box of its class is
#: within this of the NMS threshold may be suppressed in one runtime and kept in the other.
NMS_TIE_MARGIN = 0.01


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _explained(row: np.ndarray, rows: np.ndarray, edge: float) -> bool:
    """An unmatched detection that rounding can explain: at the list's edge, or an NMS
    near-tie with a higher-scored box of its own class."""
    if row[4] < edge:
        return True
    return any(
        other[4] >= row[4]
        and other[5] == row[5]
        and other is not row
        and abs(_box_iou(row, other) - END2END_IOU) <= NMS_TIE_MARGIN
        for other in rows
    )


def _edge(rows: np.ndarray, capacity: int) -> float:
    floor = float(rows[:, 4].min()) if len(rows) == capacity else END2END_CONF_FLOOR
    return floor + EDGE_MARGIN


def _row_words(row: np.ndarray) -> str:
    return f"class {int(row[5])}, score {row[4]:.4g}, box {np.round(row[:4], 2).tolist()}"


def compare_detections(got: np.ndarray, want: np.ndarray, *, where: str) -> tuple[float, float]:
    """End-to-end outputs ``[B, K, 6]`` compared as sets of detections per image: each
    detection of either list has one of the other of its class whose box is within
    ``BOX_ATOL_PX`` + ``RTOL``·|x| and score within ``SCORE_ATOL`` + ``RTOL``·s, unless
    rounding explains its absence (``_explained``). Returns the largest box and score
    differences of the matched pairs."""
    box_worst = score_worst = 0.0
    capacity = want.shape[1]
    for image, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        mine = mine[mine[:, 4] > 0].astype(np.float64)
        theirs = theirs[theirs[:, 4] > 0].astype(np.float64)
        taken = np.zeros(len(mine), dtype=bool)
        for row in theirs:
            same = np.flatnonzero((mine[:, 5] == row[5]) & ~taken)
            if same.size:
                diffs = np.abs(mine[same, :4] - row[:4]).max(axis=1)
                best = int(same[int(diffs.argmin())])
                box_diff = float(np.abs(mine[best, :4] - row[:4]).max())
                score_diff = abs(float(mine[best, 4] - row[4]))
                box_ok = box_diff <= BOX_ATOL_PX + RTOL * float(np.abs(row[:4]).max())
                if box_ok and score_diff <= SCORE_ATOL + RTOL * float(row[4]):
                    taken[best] = True
                    box_worst, score_worst = max(box_worst, box_diff), max(score_worst, score_diff)
                    continue
            if not _explained(row, theirs, _edge(theirs, capacity)):
                raise ExportError(
                    f"{where}: onnxruntime misses a detection of PyTorch's in image {image} "
                    f"({_row_words(row)})"
                )
        for row in mine[~taken]:
            if not _explained(row, mine, _edge(mine, capacity)):
                raise ExportError(
                    f"{where}: onnxruntime finds a detection PyTorch does not in image {image} "
                    f"({_row_words(row)})"
                )
    return box_worst, score_worst
