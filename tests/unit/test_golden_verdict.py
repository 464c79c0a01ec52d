"""The golden gate judges only what it can: empty against empty is no agreement, and a
stable that scores nothing on a labelled golden set leaves the gate without a verdict."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from repo_manager.errors import GateFailedError, GateUndecidedError
from repo_manager.gates import GoldenGates
from repo_manager.routing import Detections
from repo_manager.validation import agreement, run_golden_set

BOX = np.asarray([[20.0, 20.0, 60.0, 60.0]], np.float32)


def _detections(version: str, boxes: np.ndarray) -> Detections:
    n = len(boxes)
    return Detections(
        boxes=boxes.astype(np.float32).reshape(n, 4),
        scores=np.full(n, 0.9, np.float32),
        class_ids=np.zeros(n, np.int64),
        version=version,
        class_names=("shape",),
    )


class _FakeRouter:
    """Stands in for the Router in this pure-logic test: each version's fixed answer."""

    model = "m"

    def __init__(self, answers: dict[str, np.ndarray]) -> None:
        self.answers = answers

    def detect(self, image: np.ndarray, *, version: str, **_: object) -> Detections:
        return _detections(version, self.answers[version])

    def class_names(self, version: str) -> tuple[str, ...]:
        return ("shape",)


def _golden(tmp_path: Path, *, labelled: bool, n: int = 3) -> Path:
    for i in range(n):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((80, 80, 3), np.uint8))
        if labelled:  # one box, the one BOX names (cx cy w h, normalised)
            (tmp_path / f"{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return tmp_path


def _run(router: _FakeRouter, golden: Path) -> object:
    """The verdict on fixed answers, every request timed at 10 ms (the latency gate is not
    what these tests judge, and a loaded machine must not decide them)."""
    ticks = itertools.count(step=0.01)
    return run_golden_set(
        router,  # type: ignore[arg-type]
        stable="1",
        candidate="2",
        golden=golden,
        clock=lambda: float(next(ticks)),
    )


def test_empty_against_empty_is_no_agreement() -> None:
    assert agreement(matched=0, stable=0, candidate=0) is None
    assert agreement(matched=0, stable=0, candidate=4) is None  # no reference to agree with
    assert agreement(matched=0, stable=4, candidate=0) == 0.0
    assert agreement(matched=3, stable=3, candidate=3) == 1.0
    assert agreement(matched=2, stable=4, candidate=4) == 0.5


@pytest.mark.parametrize("labelled", [True, False])
def test_a_stable_that_detects_nothing_stops_the_gate_without_a_verdict(
    tmp_path: Path, labelled: bool
) -> None:
    empty = np.zeros((0, 4), np.float32)
    router = _FakeRouter({"1": empty, "2": empty})
    with pytest.raises(GateUndecidedError) as raised:
        _run(router, _golden(tmp_path, labelled=labelled))
    error = raised.value
    assert not isinstance(error, GateFailedError)  # "cannot judge" is not "canary failed"
    assert error.exit_code == 1
    message = str(error)
    assert "cannot judge version 2" in message and "stable version 1" in message
    assert "\n" not in message


def test_a_stable_that_scores_nothing_on_labels_stops_even_when_it_detects_something(
    tmp_path: Path,
) -> None:
    elsewhere = np.asarray([[0.0, 0.0, 5.0, 5.0]], np.float32)  # far from every label
    router = _FakeRouter({"1": elsewhere, "2": elsewhere})
    with pytest.raises(GateUndecidedError, match=r"mAP50 0 \(below min_stable_map50 0.01\) on"):
        _run(router, _golden(tmp_path, labelled=True))


def test_a_stable_scoring_below_the_floor_leaves_no_verdict_and_above_it_is_judged(
    tmp_path: Path,
) -> None:
    golden = _golden(tmp_path, labelled=True)
    for i in (1, 2):  # stable finds the label of image 0 only
        (golden / f"{i}.txt").write_text("0 0.1 0.1 0.1 0.1\n")
    router = _FakeRouter({"1": BOX, "2": BOX})
    judged = _run(router, golden)
    assert judged.passed and 0.01 < judged.stable.map50 < 0.5  # type: ignore[attr-defined]
    with pytest.raises(GateUndecidedError, match=r"below min_stable_map50 0\.5"):
        run_golden_set(
            router,  # type: ignore[arg-type]
            stable="1",
            candidate="2",
            golden=golden,
            gates=GoldenGates(min_stable_map50=0.5),
        )


def test_a_stable_that_scores_is_judged_and_an_empty_canary_fails(tmp_path: Path) -> None:
    golden = _golden(tmp_path, labelled=True)
    good = _run(_FakeRouter({"1": BOX, "2": BOX}), golden)
    assert good.passed and good.candidate.agreement == 1.0  # type: ignore[attr-defined]
    bad = _run(_FakeRouter({"1": BOX, "2": np.zeros((0, 4), np.float32)}), golden)
    assert not bad.passed  # type: ignore[attr-defined]
    failed = {g.name for g in bad.failures()}  # type: ignore[attr-defined]
    assert {"max_map50_drop", "min_agreement"} <= failed


class _NamedRouter(_FakeRouter):
    """Stable names (rectangle, circle); the canary orders them otherwise and adds one."""

    NAMES: ClassVar[dict[str, tuple[str, ...]]] = {
        "1": ("rectangle", "circle"),
        "2": ("circle", "rectangle", "triangle"),
    }

    def detect(self, image: np.ndarray, *, version: str, **_: object) -> Detections:
        if version == "1":
            boxes, ids = BOX, [0]  # a rectangle
        else:  # the same rectangle (its id 1) and a triangle elsewhere
            boxes, ids = np.concatenate([BOX, BOX + 5.0]), [1, 2]
        return Detections(
            boxes=boxes.astype(np.float32),
            scores=np.full(len(ids), 0.9, np.float32),
            class_ids=np.asarray(ids, np.int64),
            version=version,
            class_names=self.NAMES[version],
        )

    def class_names(self, version: str) -> tuple[str, ...]:
        return self.NAMES[version]


def test_classes_are_compared_by_name_and_a_new_class_is_reported_not_judged(
    tmp_path: Path,
) -> None:
    report: Any = _run(_NamedRouter({}), _golden(tmp_path, labelled=True))
    stable, canary = report.stable, report.candidate
    assert canary.agreement == 1.0  # its rectangle is stable's rectangle, by name
    assert canary.map50 == stable.map50 > 0.99  # the triangle: no label, and no false positive
    assert canary.new_classes == {"triangle": 3} and canary.missing_classes == []
    assert report.passed
