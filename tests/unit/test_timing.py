"""PhaseTimer: the durations and progress lines ``publish --verbose`` shows."""

from __future__ import annotations

import time

import pytest

from repo_manager.progress import Progress
from repo_manager.timing import PhaseTimer


def test_each_phase_prints_start_and_duration_and_the_summary_keeps_their_order() -> None:
    lines: list[str] = []
    timer = PhaseTimer(progress=lines.append, label="publish m 2")
    with timer.phase("export"):
        time.sleep(0.02)
    with timer.phase("stage"):
        pass
    assert lines[0] == "publish m 2: export ..."
    assert lines[1].startswith("publish m 2: export done in 0.0")
    assert list(timer.durations) == ["export", "stage"]
    assert timer.durations["export"] >= 0.02
    assert timer.summary().startswith("export 0.0") and "(total " in timer.summary()


def test_a_long_phase_reports_that_it_is_still_running() -> None:
    lines: list[str] = []
    timer = PhaseTimer(progress=Progress(emit=lines.append, tick=0.05))
    with timer.phase("load + warm-up"):
        time.sleep(0.18)
    assert any("load + warm-up: still running" in line for line in lines)


def test_a_failing_phase_is_still_timed_and_the_error_propagates() -> None:
    timer = PhaseTimer(progress=lambda _: None)
    with pytest.raises(RuntimeError), timer.phase("export"):
        raise RuntimeError("boom")
    assert "export" in timer.durations
