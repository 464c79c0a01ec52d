"""A person in the loop: an analysis waits for approval before a step, keeps judging while
it waits; approve, reject, pause and resume (recording fleet, scripted figures)."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import replace

import pytest

from repo_manager.errors import IllegalTransitionError, InvalidGateError
from repo_manager.links import Link, LinkRefusedError, LinkSigner
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


SIGNER = LinkSigner(b"k" * 32, base_url="https://manager.example.com")


def waiting(harness: Harness) -> None:
    rollout, provider = harness[0], ScriptedProvider()
    rollout.start_analysis("m", replace(GATED, approve_before=(25,)))
    rollout.advance("m", provider)
    rollout.advance("m", provider)  # passed at 10%, waits for 25%


def link(url: str) -> Link:
    parts = urllib.parse.urlsplit(url)
    return Link.from_request(parts.path, urllib.parse.parse_qs(parts.query))


def test_a_one_click_link_approves_once_then_is_refused(manager: Harness) -> None:
    waiting(manager)
    state = manager[0].state("m")
    assert state is not None
    event = decision_event(state, repository="r", links=SIGNER)
    url = event["links"]["approve"]
    assert url.startswith("https://manager.example.com/decide/m/approve?version=2&")
    approved = manager[0].approvals.by_link(link(url), SIGNER)
    assert approved.history[-1].action == "analysis: approved, now 25%"
    with pytest.raises(LinkRefusedError, match="used already"):
        manager[0].approvals.by_link(link(url), SIGNER)


def test_expired_forged_and_stale_links_are_refused(manager: Harness) -> None:
    waiting(manager)
    approvals = manager[0].approvals
    expired = SIGNER.sign("m", "2", "approve", now=time.time() - 7200)
    with pytest.raises(LinkRefusedError, match="expired"):
        approvals.by_link(link(expired), SIGNER)
    good = SIGNER.sign("m", "2", "approve")
    for forged in (
        good.replace("version=2", "version=3"),
        good.replace("/approve?", "/reject?"),
        good[:-4] + "0000",
        LinkSigner(b"x" * 32, base_url="https://evil.example.com").sign("m", "2", "reject"),
    ):
        with pytest.raises(LinkRefusedError, match="forged or altered"):
            approvals.by_link(link(forged), SIGNER)
    stale = SIGNER.sign("m", "9", "reject")
    with pytest.raises(LinkRefusedError, match="the canary of m is 2 now"):
        approvals.by_link(link(stale), SIGNER)
    state = manager[0].state("m")
    assert state is not None and state.phase is Phase.ANALYZING  # nothing moved
    assert approvals.by_link(link(good), SIGNER).history[-1].action.startswith("analysis: approved")
