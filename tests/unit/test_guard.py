"""The long-running manager judges every canary: guards a fixed weight, drives a detached
analysis, takes over one whose ``rollout`` stopped (recording fleet, scripted figures)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from repo_manager.analysis import Snapshot
from repo_manager.phases import Phase
from repo_manager.rollout.guard import CLEARED, GuardSettings, guard_key
from repo_manager.rollout.health import HealthWatch
from repo_manager.rollout.settings import AnalysisPlan
from repo_manager.state import RolloutState
from tests.unit.test_analysis_step import PLAN, ScriptedProvider
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager

GUARD = GuardSettings(interval_s=10.0, threshold=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    return fake


def judge(harness: Harness, provider: ScriptedProvider, clock: Clock, seconds: float = 10.0):
    clock.now += seconds
    return harness[0].judge_canary("m", provider, GUARD)


def actions(state: RolloutState | None) -> list[str]:
    assert state is not None
    return [t.action for t in state.history]


def test_a_failing_canary_at_a_fixed_weight_is_rolled_back_by_the_guard(
    manager: Harness, clock: Clock
) -> None:
    provider = ScriptedProvider()
    watched = judge(manager, provider, clock)
    assert actions(watched)[-1] == "guard: watching canary 2 at 10%"
    provider.interval("failing")
    first = judge(manager, provider, clock)
    assert actions(first)[-1] == "guard: check failed at 10% (1/2)"
    provider.interval("failing")
    final = judge(manager, provider, clock)
    assert final is not None and final.phase is Phase.ROLLED_BACK and final.weights == {"1": 100}
    rollback = next(t for t in reversed(final.history) if t.action == "rollback")
    assert rollback.reason.startswith("guard: 2 failed checks (threshold 2)")
    assert manager[2].read_bytes(guard_key("m")) == CLEARED


def test_a_healthy_guarded_canary_is_never_promoted_nor_moved(
    manager: Harness, clock: Clock
) -> None:
    provider = ScriptedProvider()
    for _ in range(8):
        judge(manager, provider, clock)
    state = manager[0].state("m")
    assert state is not None and state.phase is Phase.PROGRESSING
    assert state.weights == {"1": 90, "2": 10}
    # One entry when it started watching; passing checks write only the guard's progress.
    assert actions(state).count("guard: watching canary 2 at 10%") == 1
    assert not [a for a in actions(state) if a.startswith("guard: check")]


def test_failed_checks_of_a_guard_count_in_a_row(manager: Harness, clock: Clock) -> None:
    provider = ScriptedProvider()
    judge(manager, provider, clock)
    for kind in ("failing", "healthy", "failing", "healthy", "failing"):
        provider.interval(kind)
        state = judge(manager, provider, clock)
    assert state is not None and state.phase is Phase.PROGRESSING
    assert actions(state).count("guard: check failed at 10% (1/2)") == 3


def test_a_check_is_taken_once_per_interval_whoever_asks(manager: Harness, clock: Clock) -> None:
    """Two managers share the guard's progress: the second one, a moment later, judges
    nothing (its reading would be a second judgement of the same interval)."""
    provider = ScriptedProvider()
    judge(manager, provider, clock)
    provider.interval("failing")
    assert judge(manager, provider, clock, seconds=3.0) is None
    assert provider.next == ["failing"]  # no reading was even taken
    assert actions(judge(manager, provider, clock, seconds=7.0))[-1].startswith(
        "guard: check failed"
    )


def test_a_new_weight_starts_a_new_guard(manager: Harness, clock: Clock) -> None:
    provider = ScriptedProvider()
    judge(manager, provider, clock)
    provider.interval("failing")
    judge(manager, provider, clock)
    manager[0].set_weight("m", 30)
    provider.interval("failing")
    state = judge(manager, provider, clock)
    assert actions(state)[-1] == "guard: watching canary 2 at 30%"  # a baseline, no verdict
    progress = json.loads(manager[2].read_bytes(guard_key("m")) or b"")
    assert progress["status"]["failed_checks"] == 0


def test_a_detached_analysis_is_driven_by_the_manager_to_promotion(
    manager: Harness, clock: Clock
) -> None:
    provider = ScriptedProvider()
    manager[0].start_analysis("m", replace(PLAN, interval_s=10.0, detached=True))
    assert judge(manager, provider, clock, seconds=4.0) is None  # the first interval
    for _ in range(5):
        judge(manager, provider, clock)
    final = manager[0].state("m")
    assert final is not None and final.phase is Phase.SUCCEEDED and final.stable == "2"
    assert "analysis: passed the last step at 100%" in actions(final)


def test_a_rollout_that_stopped_taking_steps_is_taken_over_after_three_intervals(
    manager: Harness, clock: Clock
) -> None:
    provider = ScriptedProvider()
    rollout = manager[0]
    rollout.start_analysis("m", replace(PLAN, interval_s=10.0))
    clock.now += 10
    rollout.advance("m", provider)  # the rollout process' baseline, then it is killed
    assert judge(manager, provider, clock, seconds=25.0) is None  # it may still be alive
    taken = judge(manager, provider, clock, seconds=5.0)
    assert taken is not None and actions(taken)[-1] == "analysis: passed at 10%, now 25%"


def test_plans_persisted_before_detach_existed_are_driven_by_their_rollout() -> None:
    plan = AnalysisPlan.from_dict({"steps": [10, 100], "threshold": 2, "max_metrics_errors": 5})
    assert plan.interval_s == 30.0 and plan.detached is False


class FailingEverything(ScriptedProvider):
    """Every canary request fails (the Routers fall back to stable): errors only."""

    def snapshot(self, model: str) -> Snapshot:
        for key, version, value in (
            ("router_errors", "2", 5.0),
            ("router_ok", "1", 50.0),
            ("router_fallback_served", "1", 5.0),
        ):
            self.totals.setdefault(key, {})
            self._add(key, version, value)
        return {k: dict(v) for k, v in self.totals.items()}


def test_a_canary_that_stops_answering_is_rolled_back_on_the_next_pass(
    manager: Harness, clock: Clock
) -> None:
    health = HealthWatch()
    provider = FailingEverything()
    rollout = manager[0]
    assert rollout.judge_canary("m", provider, GUARD, health) is not None  # guard baseline
    clock.now += 1  # long before the guard's next check is due
    state = rollout.judge_canary("m", provider, GUARD, health)
    assert state is not None and state.phase is Phase.ROLLED_BACK
    rollback = next(t for t in reversed(state.history) if t.action == "rollback")
    assert rollback.reason.startswith("health: ")
    assert rollback.reason.endswith(" canary requests failed in a row, none served")


def test_a_canary_not_ready_three_passes_in_a_row_is_rolled_back() -> None:
    health = HealthWatch(failures=3)
    assert health.check("m", "2", None, ready=False) is None
    assert health.check("m", "2", None, ready=True) is None  # in a row: counts again
    assert health.check("m", "2", None, ready=False) is None
    assert health.check("m", "2", None, ready=False) is None
    reason = health.check("m", "2", None, ready=False)
    assert reason == "health: canary 2 not ready for 3 checks in a row"


def test_failures_with_some_served_are_left_to_the_gates() -> None:
    health = HealthWatch()
    before = {"router_errors": {"2": 0.0}, "router_ok": {"2": 0.0}}
    health.check("m", "2", before, ready=True)
    after = {"router_errors": {"2": 9.0}, "router_ok": {"2": 1.0}, "triton_failure": {"2": 9.0}}
    assert health.check("m", "2", after, ready=True) is None
