"""A stable that scores nothing on a labelled golden set leaves the golden gate without a
verdict: ``publish --golden`` and ``validate`` stop with one line, exit 1, and nothing moves.

Both versions are the trained detector exported at 32 px instead of the 160 px it was
trained at (the wrong image size): each detects nothing on the golden set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = "shapes"
WRONG_SIZE = ("--imgsz", "32")


def test_a_stable_that_scores_nothing_stops_the_golden_gate_and_moves_nothing(
    stack: Stack, trained_detector: Path, golden_set: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector, *WRONG_SIZE)
    gated = stack.publish(
        MODEL, "2", trained_detector, *WRONG_SIZE, "--golden", str(golden_set), check=False
    )
    assert gated.code == 1, gated.stderr
    assert len(gated.stderr.strip().splitlines()) == 1, gated.stderr
    assert "cannot judge version 2" in gated.stderr and "stable version 1 scores mAP50 0" in (
        gated.stderr
    )
    assert "failed the golden gate" not in gated.stderr
    doc = json.loads(stack.cli("status", MODEL, "--json").stdout)
    assert doc["stable"] == "1" and doc["canary"] == "2"  # no verdict: no rollback either
    assert doc["weights"] == {"1": 100, "2": 0}

    validated = stack.cli("validate", MODEL, "2", "--golden", str(golden_set), check=False)
    assert validated.code == 1 and "cannot judge version 2" in validated.stderr
    assert len(validated.stderr.strip().splitlines()) == 1
