"""A person in the loop: an analysis waits for approval before a step, keeps judging while
it waits; approve, reject, pause and resume (recording fleet, scripted figures)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from repo_manager.errors import IllegalTransitionError, InvalidGateError
from repo_manager.notifications import decision_event
from repo_manager.phases import Phase
from repo_manager.rollout.settings import AnalysisPlan, parse_step_plan
from tests.unit.test_analysis_step import PLAN, ScriptedProvider
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager

GATED = replace(PLAN, approve_before=(50,))


def weight(harness: Harness) -> int:
    state = harness[0].state("m")
    assert state is not None and state.canary is not None
    return state.weights[state.canary]


def test_the_analysis_waits_for_approval_and_approve_moves_it_on(manager: Harness) -> None:
    rollout, provider = manager[0], ScriptedProvider()
    rollout.start_analysis("m", GATED)
    rollout.advance("m", provider)  # baseline
    rollout.advance("m", provider)
    assert weight(manager) == 25
    for _ in range(2):  # passes, but waits: 50% needs a person
        state = rollout.advance("m", provider)
        assert weight(manager) == 25
    assert state.history[-1].action == "analysis: passed at 25%, waiting for approval of 50%"
    event = decision_event(state, repository="r")
    assert event["commands"]["approve"] == "repo-manager --repository r approve m"
    assert event["commands"]["reject"] == "repo-manager --repository r reject m"
    approved = rollout.approvals.approve("m", reason="reviewed the dashboards")
    assert approved.history[-1].action == "analysis: approved, now 50%"
    assert approved.history[-1].reason == "reviewed the dashboards"
    assert weight(manager) == 50
    rollout.advance("m", provider)
    final = rollout.advance("m", provider)
    assert final.phase is Phase.SUCCEEDED and final.stable == "2"


def test_a_canary_that_fails_while_waiting_is_still_rolled_back(manager: Harness) -> None:
    rollout, provider = manager[0], ScriptedProvider()
    rollout.start_analysis("m", replace(GATED, approve_before=(25,)))
    rollout.advance("m", provider)
    rollout.advance("m", provider)  # passed at 10%, waiting for 25%
    for _ in range(2):
        provider.interval("failing")
        state = rollout.advance("m", provider)
    assert state.phase is Phase.ROLLED_BACK and state.weights == {"1": 100}


def test_reject_rolls_the_canary_back_at_once(manager: Harness) -> None:
    rollout = manager[0]
    rollout.start_analysis("m", GATED)
    state = rollout.approvals.reject("m", reason="wrong labels in the new class")
    assert state.phase is Phase.ROLLED_BACK
    rollback = next(t for t in reversed(state.history) if t.action == "rollback")
    assert rollback.reason == "rejected: wrong labels in the new class"


def test_a_paused_analysis_judges_but_does_not_move_until_resumed(manager: Harness) -> None:
    rollout, provider = manager[0], ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)
    paused = rollout.approvals.pause("m")
    assert paused.history[-1].action == "analysis: paused"
    state = rollout.advance("m", provider)
    assert weight(manager) == 10 and "paused by" in state.history[-1].action
    assert "resume" in decision_event(state, repository="r")["commands"]
    rollout.approvals.resume("m")
    rollout.advance("m", provider)
    assert weight(manager) == 25


def test_decisions_with_nothing_to_decide_are_refused_in_one_line(manager: Harness) -> None:
    approvals = manager[0].approvals
    with pytest.raises(IllegalTransitionError, match="no analysis is in charge of m"):
        approvals.approve("m")
    manager[0].start_analysis("m", PLAN)
    with pytest.raises(IllegalTransitionError, match="waits for no approval"):
        approvals.approve("m")
    with pytest.raises(IllegalTransitionError, match="not paused"):
        approvals.resume("m")
    approvals.pause("m")
    with pytest.raises(IllegalTransitionError, match="paused already"):
        approvals.pause("m")


def test_pause_in_the_steps_marks_the_step_after_it() -> None:
    assert parse_step_plan("10,25,pause,50,100") == ((10, 25, 50, 100), (50,))
    assert parse_step_plan("10,50,100", "100") == ((10, 50, 100), (100,))
    with pytest.raises(InvalidGateError, match="must come before a step"):
        parse_step_plan("10,50,pause")
    with pytest.raises(InvalidGateError, match="integers like"):
        parse_step_plan("10,wait,50")
    with pytest.raises(InvalidGateError, match="name a step after the first"):
        AnalysisPlan(steps=(10, 50), approve_before=(10,))
