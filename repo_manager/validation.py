"""Golden-set validation: run a folder of images through Triton, stable and canary pinned.

For each version it measures mAP50 and mAP50-95 against the YOLO labels (Ultralytics'
own ``ap_per_class`` and its prediction-to-label matching, so the figure agrees with
``yolo val``), latency p50/p95 and errors; for the canary also the agreement of its
detections with stable's. ``GoldenGates`` turn the report into a verdict, or into no
verdict at all when stable, the reference, gives them nothing to judge against.

Classes are compared by name: a canary may add a class (a new defect type) or order its
classes otherwise. The labels' class ids are stable's; each version's detections are
mapped to them by name. A canary's detections of classes stable does not know count
neither for nor against it (no label, no agreement to have): the report lists them per
class (``new_classes``), and stable's classes the canary lacks (``missing_classes``).

numpy/torch/Ultralytics are imported lazily here; the Router stays light.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from repo_manager.errors import GateUndecidedError, GoldenSetError, RoutingError, TritonError
from repo_manager.gates import GateResult, GoldenGates
from repo_manager.golden_set import GoldenImage, load_golden_set, read_labels
from repo_manager.routing import Detections, Router

__all__ = [
    "GoldenImage",
    "ValidationReport",
    "VersionReport",
    "agreement",
    "evaluate_golden_gates",
    "load_golden_set",
    "mean_average_precision",
    "run_golden_set",
]

#: What ``yolo val`` uses: a very low confidence and NMS IoU 0.7 give the full PR curve.
MAP_CONF, MAP_IOU, MAX_DET = 0.001, 0.7, 300
#: Detections a user would see, for agreement.
AGREEMENT_CONF, AGREEMENT_IOU = 0.25, 0.5


def _correct(
    pred_boxes: np.ndarray,
    pred_cls: np.ndarray,
    true_boxes: np.ndarray,
    true_cls: np.ndarray,
    iouv: Any,
) -> np.ndarray:
    """Ultralytics' own matching of predictions (confidence order) to labels per IoU level."""
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou

    if len(true_cls) == 0 or len(pred_cls) == 0:
        return np.zeros((len(pred_cls), len(iouv)), dtype=bool)
    iou = box_iou(torch.from_numpy(true_boxes).float(), torch.from_numpy(pred_boxes).float())
    matcher = SimpleNamespace(iouv=iouv)
    correct = BaseValidator.match_predictions(
        matcher,  # type: ignore[arg-type]  # only self.iouv is read
        torch.from_numpy(pred_cls),
        torch.from_numpy(true_cls),
        iou,
    )
    return np.asarray(correct.cpu().numpy(), dtype=bool)


def mean_average_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    labels: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[float, float]:
    """(mAP50, mAP50-95) with Ultralytics' ``ap_per_class`` over every image.

    ``predictions``: per image (xyxy boxes, scores, classes), sorted by descending score;
    ``labels``: per image (xyxy boxes, classes), same pixels.
    """
    import torch
    from ultralytics.utils.metrics import ap_per_class

    iouv = torch.linspace(0.5, 0.95, 10)
    tps, confs, pred_classes, target_classes = [], [], [], []
    for (boxes, scores, classes), (true_boxes, true_cls) in zip(predictions, labels, strict=True):
        order = np.argsort(-scores, kind="stable")
        boxes, scores, classes = boxes[order], scores[order], classes[order]
        tps.append(_correct(boxes, classes, true_boxes, true_cls, iouv))
        confs.append(scores)
        pred_classes.append(classes)
        target_classes.append(true_cls)
    target = np.concatenate(target_classes) if target_classes else np.zeros(0)
    if target.size == 0:
        return 0.0, 0.0
    tp = np.concatenate(tps) if tps else np.zeros((0, 10), bool)
    if tp.shape[0] == 0:
        return 0.0, 0.0
    result = ap_per_class(
        tp, np.concatenate(confs), np.concatenate(pred_classes), target, plot=False
    )
    ap = result[5]  # [classes, 10 IoU levels]
    return float(ap[:, 0].mean()), float(ap.mean())


def stable_class_ids(found: Detections, stable_names: Sequence[str]) -> np.ndarray:
    """``found``'s class ids in stable's numbering, by class name (-1: stable has no
    such class; Ultralytics' ``ap_per_class`` and matching then leave it aside). Without
    stable's names (a config that never had them), ids are compared as they are."""
    if not stable_names:
        return found.class_ids
    index = {name: i for i, name in enumerate(stable_names)}
    return np.asarray([index.get(label, -1) for label in found.labels], dtype=np.int64)


def _agreement_counts(stable: Detections, canary: Detections) -> tuple[int, int, int, Counter[str]]:
    """(matched, stable count, canary count, canary's new-class counts) at user-facing
    confidence, stable as truth, classes compared by name."""
    import torch

    s_keep = stable.scores >= AGREEMENT_CONF
    c_keep = canary.scores >= AGREEMENT_CONF
    c_ids = stable_class_ids(canary, stable.class_names)
    labels = np.asarray(canary.labels, dtype=object)
    new = Counter(str(label) for label in labels[c_keep & (c_ids < 0)])
    c_keep &= c_ids >= 0
    s_boxes, s_cls = stable.boxes[s_keep], stable.class_ids[s_keep]
    c_boxes, c_scores, c_cls = canary.boxes[c_keep], canary.scores[c_keep], c_ids[c_keep]
    order = np.argsort(-c_scores, kind="stable")
    correct = _correct(c_boxes[order], c_cls[order], s_boxes, s_cls, torch.tensor([AGREEMENT_IOU]))
    return int(correct[:, 0].sum()), len(s_cls), len(c_cls), new


def agreement(*, matched: int, stable: int, candidate: int) -> float | None:
    """F1 of the candidate's detections against stable's: ``matched`` over the mean count.

    None when stable, the reference, detected nothing: empty against empty is no
    agreement (two detectors that see nothing are not shown to agree), and a candidate
    cannot be judged against nothing either.
    """
    if stable == 0:
        return None
    return 2.0 * matched / (stable + candidate)


@dataclass(kw_only=True)
class VersionReport:
    """What one version did on the golden set."""

    version: str
    images: int
    errors: int
    map50: float | None
    map50_95: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    #: Agreement with stable's detections (None for stable itself).
    agreement: float | None = None
    #: Detections (at the agreement's confidence) of classes stable does not know, by name.
    new_classes: dict[str, int] = field(default_factory=dict)
    #: Stable's classes this version does not name.
    missing_classes: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.images if self.images else 0.0


@dataclass(kw_only=True)
class ValidationReport:
    """Stable and candidate on one golden set, and every gate's verdict."""

    model: str
    golden: str
    images: int
    labelled: int
    stable: VersionReport
    candidate: VersionReport
    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failures(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "golden": self.golden,
            "images": self.images,
            "labelled": self.labelled,
            "stable": asdict(self.stable),
            "candidate": asdict(self.candidate),
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
        }


def _run_versions(
    router: Router,
    versions: tuple[str, ...],
    images: list[np.ndarray],
    clock: Callable[[], float],
) -> dict[str, tuple[list[Detections | None], list[float]]]:
    """Every image through each version (pinned: no fallback hides its failures), the
    versions taking turns image by image, so that whatever else loads the machine meanwhile
    weighs on each alike (one after the other, a busy minute made a latency ratio of 2.7
    out of two copies of one model)."""
    runs: dict[str, tuple[list[Detections | None], list[float]]] = {v: ([], []) for v in versions}
    for image in images:
        for version in versions:
            results, latencies = runs[version]
            started = clock()
            try:
                found = router.detect(
                    image, conf=MAP_CONF, iou=MAP_IOU, max_det=MAX_DET, version=version
                )
            except (RoutingError, TritonError):
                results.append(None)
                continue
            latencies.append(clock() - started)
            results.append(found)
    return runs


def _version_report(
    version: str,
    detections: list[Detections | None],
    latencies: list[float],
    labels: list[tuple[np.ndarray, np.ndarray]],
    labelled: bool,
    stable_names: Sequence[str],
) -> VersionReport:
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    preds = [
        empty if d is None else (d.boxes, d.scores, stable_class_ids(d, stable_names))
        for d in detections
    ]
    map50 = map50_95 = None
    if labelled:
        map50, map50_95 = mean_average_precision(preds, labels)
    lat = np.asarray(latencies) * 1000.0
    return VersionReport(
        version=version,
        images=len(detections),
        errors=sum(d is None for d in detections),
        map50=map50,
        map50_95=map50_95,
        latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
        latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else None,
    )


def run_golden_set(
    router: Router,
    *,
    stable: str,
    candidate: str,
    golden: str | Path,
    gates: GoldenGates | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ValidationReport:
    """Run the golden set through ``stable`` and ``candidate`` and judge the candidate
    (``clock`` times each request: tests of the verdict pass one of their own)."""
    import cv2

    items = load_golden_set(golden)
    images, labels = [], []
    for item in items:
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            raise GoldenSetError(f"cannot read image {item.path}")
        images.append(image)
        labels.append(read_labels(item.labels, *image.shape[:2]))
    labelled = sum(i.labels is not None for i in items)
    versions = tuple(dict.fromkeys((stable, candidate)))
    _run_versions(router, versions, images[:1], clock)  # one untimed request each warms it
    runs = _run_versions(router, versions, images, clock)
    (stable_dets, stable_lat), (cand_dets, cand_lat) = runs[stable], runs[candidate]
    stable_names = router.class_names(stable)
    stable_report = _version_report(
        stable, stable_dets, stable_lat, labels, labelled > 0, stable_names
    )
    cand_report = _version_report(
        candidate, cand_dets, cand_lat, labels, labelled > 0, stable_names
    )
    matched = n_stable = n_cand = 0
    new_classes: Counter[str] = Counter()
    for s, c in zip(stable_dets, cand_dets, strict=True):
        if s is None or c is None:
            continue
        m, ns, nc, new = _agreement_counts(s, c)
        matched, n_stable, n_cand = matched + m, n_stable + ns, n_cand + nc
        new_classes.update(new)
    cand_report.agreement = agreement(matched=matched, stable=n_stable, candidate=n_cand)
    cand_report.new_classes = dict(sorted(new_classes.items()))
    candidate_names = set(router.class_names(candidate))
    cand_report.missing_classes = [n for n in stable_names if n not in candidate_names]
    report = ValidationReport(
        model=router.model,
        golden=str(golden),
        images=len(items),
        labelled=labelled,
        stable=stable_report,
        candidate=cand_report,
    )
    report.gates = evaluate_golden_gates(report, gates or GoldenGates())
    return report


def _undecided(report: ValidationReport, gates: GoldenGates) -> str | None:
    """Why the gates cannot judge the candidate at all, or None when they can.

    A labelled set judges by mAP: a stable scoring (next to) nothing there (wrong image
    size, wrong classes, a broken export) makes every drop meaningless. An unlabelled set
    judges by agreement only, which has no reference when stable detected nothing.
    """
    s = report.stable
    if report.labelled and (s.map50 or 0.0) < gates.min_stable_map50:
        return (
            f"stable version {s.version} scores mAP50 {s.map50 or 0.0:.3g} (below "
            f"min_stable_map50 {gates.min_stable_map50:g}) on the {report.labelled} "
            "labelled images"
        )
    if not report.labelled and report.candidate.agreement is None:
        return (
            f"stable version {s.version} detects nothing (confidence >= {AGREEMENT_CONF:g}) "
            f"on the {report.images} images"
        )
    return None


def evaluate_golden_gates(report: ValidationReport, gates: GoldenGates) -> list[GateResult]:
    """Every golden gate's verdict on a report.

    Raises GateUndecidedError (not a failure of the candidate) when stable gives the gates
    nothing to judge against (``_undecided``).
    """
    reason = _undecided(report, gates)
    if reason is not None:
        raise GateUndecidedError(
            f"the golden gate cannot judge version {report.candidate.version} of "
            f"{report.model}: {reason} of {report.golden} (exported at another image size? "
            "labels of other classes?)"
        )
    s, c = report.stable, report.candidate
    no_labels = "no labels in the golden set"

    def drop(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    ratio = None
    if s.latency_p50_ms and c.latency_p50_ms is not None:
        ratio = c.latency_p50_ms / s.latency_p50_ms
    return [
        GateResult.of(
            gates,
            "max_map50_drop",
            drop(s.map50, c.map50),
            "" if s.map50 is not None else no_labels,
        ),
        GateResult.of(
            gates,
            "max_map50_95_drop",
            drop(s.map50_95, c.map50_95),
            "" if s.map50_95 is not None else no_labels,
        ),
        GateResult.of(
            gates,
            "min_agreement",
            c.agreement,
            "" if c.agreement is not None else "stable detected nothing to agree with",
        ),
        GateResult.of(gates, "max_latency_ratio", ratio, "canary p50 / stable p50"),
        GateResult.of(gates, "max_error_rate", c.error_rate),
    ]
