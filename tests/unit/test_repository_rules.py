from __future__ import annotations

import os
from pathlib import Path

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


def test_a_full_disk_is_said_in_the_os_s_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shutil.copytree gathers its errors into one whose strerror is None: the cause (a
    full disk) must still reach the user, not "cannot publish ...: None"."""
    import errno
    import shutil

    from repo_manager.errors import StorageError
    from repo_manager.storage import LocalStorage

    source = tmp_path / "staged"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"x")

    def full_disk(src: str, dst: str, *args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(shutil, "copyfile", full_disk)  # what copytree's copy2 calls
    storage = LocalStorage(tmp_path / "repo")
    with pytest.raises(StorageError) as raised:
        storage.publish_dir(source, "m.versions/2")
    assert str(raised.value).endswith(": No space left on device")
    assert not (tmp_path / "repo" / "m.versions" / "2").exists()
