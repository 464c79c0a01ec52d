"""Rollout settings check themselves; the parsers only turn strings into them."""

from __future__ import annotations

from typing import Any

import pytest

from repo_manager.errors import (
    InvalidGateError,
    InvalidInputError,
    InvalidVersionError,
    InvalidWeightError,
)
from repo_manager.rollout import (
    AnalysisPlan,
    RolloutSettings,
    VersionPolicy,
    parse_policy,
    parse_steps,
    parse_weight,
)


@pytest.mark.parametrize("weight", ["101", "-1", "ten", "5.5"])
def test_weights_outside_0_to_100_are_refused(weight: str) -> None:
    with pytest.raises(InvalidWeightError):
        parse_weight(weight)


@pytest.mark.parametrize("weight", ["0", "10", "100"])
def test_weights_in_range_are_accepted(weight: str) -> None:
    assert parse_weight(weight) == int(weight)


def test_policy_needs_exactly_one_choice() -> None:
    with pytest.raises(Exception, match="exactly one"):
        parse_policy(latest=2, all_versions=True, specific=None)
    assert parse_policy(latest=None, all_versions=False, specific="3,1") == {"specific": ["1", "3"]}


@pytest.mark.parametrize("text", ["", "0,0,50", "50,25", "10,x", "10,200", "-5,10"])
def test_bad_steps_are_bad_input(text: str) -> None:
    with pytest.raises(InvalidGateError):
        AnalysisPlan(steps=parse_steps(text))


def test_parse_steps_only_converts() -> None:
    assert parse_steps("50, 25,") == (50, 25)  # the order is the plan's to refuse


@pytest.mark.parametrize(
    "plan",
    [
        {"steps": (50, 25)},
        {"steps": (10, 10)},
        {"steps": (101,)},
        {"steps": ()},
        {"threshold": 0},
        {"max_metrics_errors": 0},
    ],
)
def test_an_analysis_plan_checks_itself(plan: dict[str, Any]) -> None:
    with pytest.raises(InvalidGateError):
        AnalysisPlan(**plan)


def test_a_persisted_plan_is_checked_like_a_new_one() -> None:
    document = AnalysisPlan(steps=(0, 50)).to_dict()
    assert AnalysisPlan.from_dict(document) == AnalysisPlan(steps=(0, 50))
    document["gates"]["max_error_rate"] = 3.0
    with pytest.raises(InvalidGateError, match="max_error_rate"):
        AnalysisPlan.from_dict(document)


@pytest.mark.parametrize(
    "settings", [{"canary_weight": 101}, {"drain_seconds": -1.0}, {"ready_timeout": 0.0}]
)
def test_rollout_settings_check_themselves(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        RolloutSettings(**settings)


def test_a_version_policy_round_trips_and_keeps_what_it_names() -> None:
    on_disk = ["1", "2", "3", "4"]
    for document, kept in (
        ({"latest": 2}, ["3", "4"]),
        ({"all": True}, on_disk),
        ({"specific": ["2", "9"]}, ["2"]),
    ):
        policy = VersionPolicy.from_document(document)
        assert policy is not None and policy.to_document() == document
        assert policy.keeps(on_disk) == kept
    assert VersionPolicy.from_document(None) is None


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"latest": 0, "all_versions": False, "specific": None}, InvalidInputError),
        ({"latest": None, "all_versions": False, "specific": " , "}, InvalidInputError),
        ({"latest": None, "all_versions": False, "specific": "1,x"}, InvalidVersionError),
    ],
)
def test_bad_policy_options_are_bad_input(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_policy(**options)
