from __future__ import annotations

import json
from pathlib import Path

import pytest

from repo_manager.errors import StorageError
from repo_manager.phases import Phase
from repo_manager.state import RolloutState, Transition, load_routing_table, load_state, state_key
from repo_manager.storage import LocalStorage


def _state() -> RolloutState:
    return RolloutState(
        model="m",
        phase=Phase.PROGRESSING,
        stable="1",
        canary="2",
        weights={"1": 90, "2": 10},
        generation=3,
        history=[
            Transition(
                at="t",
                action="publish",
                from_phase=None,
                to_phase="initialized",
                stable="1",
                canary=None,
                weights={"1": 100},
            )
        ],
    )


def test_state_round_trips_through_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write_bytes_atomic(state_key("m"), _state().to_json())
    assert load_state(storage, "m") == _state()
    table = load_routing_table(storage, "m")
    assert table is not None and table.weights == {"1": 90, "2": 10} and table.generation == 3


def test_a_history_entry_with_a_field_of_a_newer_manager_still_reads(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    document = json.loads(_state().to_json())
    document["history"][0]["zone"] = "a field this version does not know"
    storage.write_bytes_atomic(state_key("m"), json.dumps(document).encode())
    assert load_state(storage, "m") == _state()


def test_state_lives_in_a_root_file_not_a_folder_triton_would_list() -> None:
    assert "/" not in state_key("yolov8s")


def test_atomic_write_leaves_no_staging_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    for _ in range(3):
        storage.write_bytes_atomic(state_key("m"), _state().to_json())
    assert sorted(p.name for p in tmp_path.iterdir()) == [state_key("m")]


def test_corrupt_state_is_a_storage_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write_bytes_atomic(state_key("m"), b"{not json")
    with pytest.raises(StorageError, match="corrupt"):
        load_state(storage, "m")


def test_serving_versions_include_the_retiring_one() -> None:
    state = RolloutState(
        model="m", phase=Phase.PROMOTING, stable="2", retiring="1", weights={"2": 100}
    )
    assert state.serving_versions == ["1", "2"]


def test_published_folder_appears_whole(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f").write_text("x")
    storage = LocalStorage(tmp_path / "repo")
    storage.publish_dir(source, "m/1")
    assert (tmp_path / "repo" / "m" / "1" / "sub" / "f").read_text() == "x"
    with pytest.raises(StorageError, match="exists"):
        storage.publish_dir(source, "m/1")
