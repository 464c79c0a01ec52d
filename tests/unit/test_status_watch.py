"""``status --watch``: the loop and its frames, fed a scripted rollout (the live view of a
real rollout driven from another process is in tests/integration/test_history_watch.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from repo_manager.analysis import Snapshot
from repo_manager.cli.watch import CLEAR, Watch
from repo_manager.errors import MetricsUnavailableError
from repo_manager.rollout.status import status_document
from repo_manager.state import RolloutState
from repo_manager.triton import ServerVersions, VersionState
from tests.unit.test_analysis_step import PLAN, ScriptedProvider
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager


class Scripted:
    """Each read takes the next analysis step of a real (recording-fleet) rollout."""

    def __init__(self, harness: Harness) -> None:
        self.rollout = harness[0]
        self.provider = ScriptedProvider()
        self.reads = 0

    def read(self) -> tuple[dict[str, Any], RolloutState]:
        if self.reads:
            self.rollout.advance("m", self.provider)
        self.reads += 1
        state = self.rollout.state("m")
        assert state is not None
        survey = [
            ServerVersions(
                url="triton-a:8001",
                versions=tuple(
                    VersionState(version=v, state="READY") for v in state.serving_versions
                ),
                public=state.stable,
            )
        ]
        return status_document(state, survey, ["1", "2"]), state


def counters(requests: float) -> Snapshot:
    return {
        "triton_success": {"1": 3 * requests, "2": requests * 0.9},
        "triton_failure": {"2": requests / 10},
        "triton_duration_us": {"1": 3 * requests * 8000, "2": requests * 9000},
    }


def watch(scripted: Scripted, *, tty: bool, sample: Any = None) -> tuple[list[str], RolloutState]:
    frames: list[str] = []
    totals = iter(range(1, 1000))
    clock = iter(float(i) for i in range(1000))
    state = Watch(
        read=scripted.read,
        sample=sample or (lambda: counters(10.0 * next(totals))),
        write=frames.append,
        tty=tty,
        interval=0.001,
        source="scrape http://triton-a:8002/metrics",
        clock=lambda: next(clock),
    ).run()
    return frames, state


def test_plain_output_shows_every_step_appends_and_ends_with_the_rollout(
    manager: Harness,
) -> None:
    scripted = Scripted(manager)
    scripted.rollout.start_analysis("m", PLAN)
    frames, state = watch(scripted, tty=False)
    assert state.phase.value == "succeeded"
    text = "".join(frames)
    assert "\x1b" not in text
    order = [
        "analysis started at 10%",
        "analysis: baseline",
        "analysis: passed at 10%, now 25%",
        "analysis: passed at 25%, now 50%",
        "analysis: passed at 50%, now 100%",
        "analysis: passed the last step at 100%",
        "promote",
        "promoted",
    ]
    positions = [text.index(f" {action}") for action in order]
    assert positions == sorted(positions)
    # Steps with the current one marked, weights, counters, live figures, servers.
    assert "steps     [10%] > 25% > 50% > 100%   (step 1 of 4)" in frames[0]
    assert "steps     10% > [25%] > 50% > 100%   (step 2 of 4)" in text
    assert "analysis  failed checks 0/2  metrics errors 0/3" in text
    assert "error_rate[triton]" in text
    live = next(line for line in text.splitlines() if line.strip().startswith("triton  canary"))
    assert "v2" in live and "10.0 req/s" in live and "errors  10.00%" in live
    assert "latency 9.0 ms" in live
    assert "server    triton-a:8001: v1 READY, v2 READY; public -> v1" in text
    assert frames[-1].splitlines()[0].startswith("m  phase succeeded  stable 2")
    assert "live      rollout over: succeeded" in frames[-1]


def test_a_terminal_redraws_in_place(manager: Harness) -> None:
    scripted = Scripted(manager)
    scripted.rollout.start_analysis("m", PLAN)
    frames, _ = watch(scripted, tty=True)
    assert len(frames) == scripted.reads and all(f.startswith(CLEAR) for f in frames)
    assert "history\n" in frames[-1] and "promoted" in frames[-1]


def test_an_ended_rollout_is_shown_once_without_reading_metrics(manager: Harness) -> None:
    scripted = Scripted(manager)
    scripted.rollout.start_analysis("m", PLAN)
    while scripted.rollout.advance("m", scripted.provider).phase.value == "analyzing":
        pass

    def sample() -> Snapshot:
        raise AssertionError("read metrics for an ended rollout")

    frames, state = watch(scripted, tty=False, sample=sample)
    assert len(frames) == 1 and state.phase.value == "succeeded"


def test_unreadable_metrics_are_shown_and_the_watch_goes_on(manager: Harness) -> None:
    scripted = Scripted(manager)
    scripted.rollout.start_analysis("m", PLAN)

    def sample() -> Snapshot:
        raise MetricsUnavailableError("metrics source http://x:8002/metrics unreachable")

    frames, state = watch(scripted, tty=False, sample=sample)
    assert state.phase.value == "succeeded"
    assert "live      metrics unavailable: metrics source http://x:8002/metrics" in frames[0]


def test_a_signal_stops_the_watch(manager: Harness, tmp_path: Path) -> None:
    scripted = Scripted(manager)
    stop = threading.Event()
    stop.set()
    frames: list[str] = []
    Watch(
        read=scripted.read,
        sample=lambda: counters(1.0),
        write=frames.append,
        tty=False,
        interval=60,
        stop=stop,
    ).run()
    assert len(frames) == 1 and "phase progressing" in frames[0]
    assert "steps     none: the weights are set by hand" in frames[0]


def test_live_figures_span_the_last_window_of_readings(manager: Harness) -> None:
    scripted = Scripted(manager)
    doc, state = scripted.read()  # a canary at 10%, weights set by hand: never terminal
    stop = threading.Event()
    frames: list[str] = []

    def write(frame: str) -> None:
        frames.append(frame)
        if len(frames) == 15:
            stop.set()

    clock = iter(float(i) for i in range(100))
    totals = iter(range(1, 100))
    Watch(
        read=lambda: (doc, state),
        sample=lambda: counters(10.0 * next(totals)),
        write=write,
        tty=True,
        interval=0.001,
        stop=stop,
        source="scrape",
        clock=lambda: next(clock),
    ).run()
    spans = [line for f in frames for line in f.splitlines() if line.startswith("live")]
    assert spans[0] == "live      measuring (scrape)"
    assert spans[1] == "live      over the last 1.0 s (scrape)"
    assert spans[10:] == ["live      over the last 10.0 s (scrape)"] * 5
