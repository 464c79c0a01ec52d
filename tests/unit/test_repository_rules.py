from __future__ import annotations

import pytest

from repo_manager.errors import InvalidNameError, InvalidVersionError, InvalidWeightError
from repo_manager.repository import validate_model_name, validate_version
from repo_manager.rollout import parse_policy, parse_weight


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "has space", "/abs", ".hidden", "-x"])
def test_unsafe_model_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_model_name(name)


@pytest.mark.parametrize("name", ["yolov8s", "cam-7_detector", "v8.n"])
def test_plain_model_names_are_accepted(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize("version", ["0", "-1", "abc", "", "01", "1.5", " "])
def test_versions_must_be_positive_integers(version: str) -> None:
    with pytest.raises(InvalidVersionError):
        validate_version(version)


def test_version_is_normalised_to_its_folder_name() -> None:
    assert validate_version(3) == "3"


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
