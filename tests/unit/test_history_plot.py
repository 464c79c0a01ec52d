"""``history --plot``: the series the figure draws, checked through the figure's own data
(never pixels), from the history a real analysis (recording fleet) leaves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from repo_manager.analysis import Snapshot
from repo_manager.history.plot import figure, plot_data, write_plot
from repo_manager.rollout.ledger import Ledger
from repo_manager.state import Transition
from repo_manager.storage import LocalStorage
from tests.unit.test_analysis_step import PLAN, ScriptedProvider
from tests.unit.test_history import record_moves
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager

pytest.importorskip("matplotlib", reason="the plot extra: pip install 'repo-manager[plot]'")


def rolled_out(harness: Harness, *, failing: bool) -> list[Transition]:
    """Analysis 10,25,50,100: baseline, a pass, then healthy (promoted) or failing twice
    (rolled back)."""
    rollout = harness[0]
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)
    rollout.advance("m", provider)
    for _ in range(3):
        if failing:
            provider.interval("failing")
        state = rollout.advance("m", provider)
    return state.history


def lines(ax: object) -> dict[str, list[float]]:
    """Label -> y data of each labelled line of an axes."""
    return {
        line.get_label(): [float(y) for y in line.get_ydata()]
        for line in ax.get_lines()  # type: ignore[attr-defined]
        if not line.get_label().startswith("_")
    }


def test_weights_of_every_version_and_a_mark_per_transition(manager: Harness) -> None:
    history = rolled_out(manager, failing=False)
    fig = figure(history, model="m")
    top = fig.axes[0]
    drawn = {k: [None if math.isnan(y) else y for y in v] for k, v in lines(top).items()}
    # start, baseline, three passes (to 25, 50, 100), the last step, promote, promoted:
    # v1 ends at 0 and its line stops once the promote took it out of the table.
    assert drawn["v1 weight"] == [90, 90, 75, 50, 0, 0, None, None]
    assert drawn["v2 weight"] == [10, 10, 25, 50, 100, 100, 100, 100]
    marks = [line for line in top.get_lines() if line.get_gid() == "transition"]
    assert len(marks) == len(history)
    assert [m.get_xdata()[0] for m in marks] == plot_data(history).times
    assert {"analysis started", "analysis passed", "promote"} <= set(drawn)


def test_a_version_has_no_line_before_its_publish(tmp_path: Path) -> None:
    history = record_moves(Ledger(LocalStorage(tmp_path)), [20]).history
    assert plot_data(history).weights == {"1": [100, 90, 80], "2": [None, 10, 20]}


def test_each_step_shows_canary_and_stable_error_rate_and_latency_with_the_gates(
    manager: Harness,
) -> None:
    history = rolled_out(manager, failing=True)
    data = plot_data(history)
    assert data.source == "triton"
    # Judged steps: one pass at 10%, two failed checks at 25%.
    assert [(s.weight, s.outcome) for s in data.steps] == [(10, "pass"), (25, "fail"), (25, "fail")]
    fig = figure(history, model="m")
    _, errors, latency, _ = fig.axes
    e, lat = lines(errors), lines(latency)
    assert e["canary error rate"] == pytest.approx([0.0, 20.0, 20.0])
    assert e["stable error rate"] == pytest.approx([0.0, 0.0, 0.0])
    assert e["gate: max error rate"] == pytest.approx([1.0, 1.0, 1.0])
    assert e["failed check"] == pytest.approx([20.0, 20.0])
    assert lat["canary latency"] == pytest.approx([10.0, 10.0, 10.0])
    assert lat["stable latency"] == pytest.approx([10.0, 10.0, 10.0])
    assert lat["gate: stable latency x max ratio"] == pytest.approx([15.0, 15.0, 15.0])
    assert "triton metrics" in errors.get_title()


def test_a_history_without_analysis_draws_weights_alone(manager: Harness) -> None:
    rollout = manager[0]
    state = rollout.set_weight("m", 40)
    data = plot_data(state.history)
    assert data.source is None and data.steps == []
    _, errors, _, _ = figure(state.history, model="m").axes
    assert not lines(errors)
    assert any(t.get_text() == "no analysis steps" for t in errors.texts)


class DetectingProvider(ScriptedProvider):
    """Also what the Routers' ``detect`` counted: per interval 100 images a version, box
    counts 1..4 (mean 2.5); a ``blind`` canary finds none."""

    def __init__(self) -> None:
        super().__init__()
        self.blind = False

    def snapshot(self, model: str) -> Snapshot:
        for version in ("1", "2"):
            counts = [0] * 100 if self.blind and version == "2" else [1, 2, 3, 4] * 25
            for key, value in (
                ("router_ok", 100),
                ("router_latency_sum", 1.0),
                ("router_latency_count", 100),
                ("router_images", 100),
                ("router_boxes", sum(counts)),
                ("router_boxes_squared", sum(c * c for c in counts)),
                ("router_scores", 0.8 * sum(counts)),
            ):
                self.totals.setdefault(key, {})
                self._add(key, version, value)
        return super().snapshot(model)


def test_each_step_shows_canary_and_stable_boxes_per_image_and_the_failed_checks(
    manager: Harness,
) -> None:
    rollout = manager[0]
    provider = DetectingProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)  # baseline
    rollout.advance("m", provider)  # a pass at 10%
    provider.blind = True
    for _ in range(2):
        state = rollout.advance("m", provider)
    data = plot_data(state.history)
    assert [(s.weight, s.outcome) for s in data.steps] == [(10, "pass"), (25, "fail"), (25, "fail")]
    assert "max_box_count_z[router]" in data.steps[-1].failed
    boxes = lines(figure(state.history, model="m").axes[3])
    # Per interval, as the other panels (the gate itself judged its 120 s window).
    assert boxes["canary boxes per image"] == pytest.approx([2.5, 0.0, 0.0])
    assert boxes["stable boxes per image"] == pytest.approx([2.5, 2.5, 2.5])
    assert boxes["failed check"] == pytest.approx([0.0, 0.0])
    assert "gate: max error rate" not in boxes


def test_write_plot_writes_a_png_and_nothing_else(manager: Harness, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    out.mkdir()
    write_plot(rolled_out(manager, failing=True), out / "rollout.png", model="m")
    assert [p.name for p in out.iterdir()] == ["rollout.png"]
    assert (out / "rollout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class MemoryProvider(ScriptedProvider):
    """Also Triton's memory gauges: a GPU at half of 80 GB, then at three quarters."""

    def __init__(self) -> None:
        super().__init__()
        self.used = 40e9

    def snapshot(self, model: str) -> Snapshot:
        reading = dict(super().snapshot(model))
        reading["memory_used"] = {"t0 GPU-1": self.used}
        reading["memory_total"] = {"t0 GPU-1": 80e9}
        return reading


def test_a_fifth_panel_shows_the_servers_memory_where_a_source_reports_it(
    manager: Harness,
) -> None:
    rollout = manager[0]
    provider = MemoryProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)  # baseline
    rollout.advance("m", provider)
    provider.used = 60e9
    state = rollout.advance("m", provider)
    assert [s.memory_share for s in plot_data(state.history).steps] == [0.5, 0.75]
    fig = figure(state.history, model="m")
    assert len(fig.axes) == 5
    memory = lines(fig.axes[4])
    assert memory["gate"] == pytest.approx([95.0, 95.0])
    assert memory["failed check"] == []
