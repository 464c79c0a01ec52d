from __future__ import annotations

import pytest

from repo_manager.errors import InvalidNameError, InvalidVersionError
from repo_manager.repository import validate_model_name, validate_version


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
