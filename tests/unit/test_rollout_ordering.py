"""Order of a rollout's moves, proved with a recording fake fleet (pure logic only:
everything that claims Triton behaviour is tested against the real server)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from repo_manager.errors import (
    IllegalTransitionError,
    IncompatibleModelError,
    InvalidInputError,
    TritonError,
    VersionNotReadyError,
)
from repo_manager.modelconfig import ModelConfig, alias_target, render_config
from repo_manager.names import versions_model_name
from repo_manager.phases import Phase, check_transition
from repo_manager.repository import ModelRepository
from repo_manager.rollout import RolloutManager, RolloutSettings
from repo_manager.state import RolloutState, load_state, state_key
from repo_manager.storage import LocalStorage
from tests.unit.published import write_published, write_version

Call = tuple[list[str], list[str], dict[str, int]] | tuple[str, str | None, dict[str, int]]


class RecordingFleet:
    """Records each apply (versions, gone) and each move of the public name ("public",
    version) with the routing weights persisted at that moment."""

    def __init__(self, storage: LocalStorage, model: str) -> None:
        self.storage = storage
        self.model = model
        self.calls: list[Call] = []
        self.public: str | None = "1"
        self.servers = [object()]
        #: Raised by the next applies, one each, before anything else (a refused load, an
        #: interrupt, a server that does not let go).
        self.raise_next: list[BaseException] = []

    def check_reachable(self) -> None:
        return None

    def server_versions(self) -> dict[str, str]:
        return {"fake": "2.51.0"}

    def apply(
        self,
        model: str,
        config: ModelConfig,
        versions: Sequence[str],
        *,
        gone: Sequence[str] = (),
        timeout: float,
        only: Sequence[str] | None = None,
    ) -> None:
        if self.raise_next:
            raise self.raise_next.pop(0)
        assert model == versions_model_name(self.model)
        self.calls.append((list(versions), list(gone), self._weights()))

    def point_public(
        self, name: str, config: ModelConfig, *, timeout: float, only: Sequence[str] | None = None
    ) -> list[str]:
        assert name == self.model
        if alias_target(config) == self.public:
            return []
        self.public = alias_target(config)
        self.calls.append(("public", self.public, self._weights()))
        return ["fake"]

    def _weights(self) -> dict[str, int]:
        state = load_state(self.storage, self.model)
        return dict(state.weights) if state else {}

    def survey(self, model: str, *, alias: str | None = None) -> list[object]:
        return []


Harness = tuple[RolloutManager, RecordingFleet, LocalStorage]


@pytest.fixture
def manager(tmp_path: Path) -> Harness:
    storage = LocalStorage(tmp_path)
    write_published(tmp_path, "m", ["1", "2"])
    state = RolloutState(
        model="m", phase=Phase.PROGRESSING, stable="1", canary="2", weights={"1": 90, "2": 10}
    )
    storage.write_bytes_atomic(state_key("m"), state.to_json())
    fleet = RecordingFleet(storage, "m")
    rollout = RolloutManager(
        ModelRepository(storage),
        fleet,  # type: ignore[arg-type]
        settings=RolloutSettings(drain_seconds=0.0),
    )
    return rollout, fleet, storage


def test_promote_moves_all_traffic_before_unloading_old_stable(manager: Harness) -> None:
    rollout, fleet, _ = manager
    final = rollout.promote("m")
    # Triton is called only when the table already sends 100% to the new stable: both
    # versions stay, the public name moves to the new stable, and only then 1 is unloaded.
    assert fleet.calls == [
        (["1", "2"], [], {"2": 100}),
        ("public", "2", {"2": 100}),
        (["2"], ["1"], {"2": 100}),
    ]
    assert final.phase is Phase.SUCCEEDED and final.stable == "2" and final.canary is None
    assert [t.to_phase for t in final.history][-2:] == ["promoting", "succeeded"]


def test_rollback_moves_all_traffic_before_unloading_canary(manager: Harness) -> None:
    rollout, fleet, _ = manager
    final = rollout.rollback("m")
    # The public name never left stable: nothing moves it, the canary is simply unloaded.
    assert fleet.calls == [(["1", "2"], [], {"1": 100}), (["1"], ["2"], {"1": 100})]
    assert final.phase is Phase.ROLLED_BACK and final.stable == "1"


def test_set_weight_changes_only_the_table(manager: Harness) -> None:
    rollout, fleet, _ = manager
    state = rollout.set_weight("m", 35)
    assert state.weights == {"1": 65, "2": 35} and fleet.calls == []


def test_a_failed_unload_leaves_a_transient_phase_that_reconcile_finishes(manager: Harness) -> None:
    rollout, fleet, storage = manager
    fleet.raise_next.append(TritonError("load refused"))
    with pytest.raises(TritonError):
        rollout.promote("m")
    stuck = load_state(storage, "m")
    assert stuck is not None and stuck.phase is Phase.PROMOTING and stuck.weights == {"2": 100}
    rollout.reconcile("m")
    done = load_state(storage, "m")
    assert done is not None and done.phase is Phase.SUCCEEDED and done.retiring is None


def test_promote_twice_is_refused_after_the_first(manager: Harness) -> None:
    rollout, _, _ = manager
    rollout.promote("m")
    with pytest.raises(IllegalTransitionError, match="no canary"):
        rollout.promote("m")


def staged_version(root: Path, version: str, config: ModelConfig | None = None) -> Path:
    """What a caller hands ``publish``: config.pbtxt + VERSION/manifest.json, exported."""
    staged = root / f"staged-{version}" / "m"
    write_version(staged / version, "m", version)
    (staged / "config.pbtxt").write_bytes(render_config(config or ModelConfig(name="m")))
    return staged


def test_publish_adds_a_staged_version_as_the_canary(manager: Harness, tmp_path: Path) -> None:
    rollout, fleet, _ = manager
    rollout.promote("m")
    fleet.calls.clear()
    state = rollout.publish("m", "3", staged=staged_version(tmp_path, "3"), canary_weight=20)
    assert state.phase is Phase.PROGRESSING and (state.stable, state.canary) == ("2", "3")
    assert state.weights == {"2": 80, "3": 20}
    assert (tmp_path / "m.versions" / "3" / "manifest.json").is_file()
    # Loaded beside stable while the table still sends it nothing; then the table moves.
    assert fleet.calls == [(["2", "3"], [], {"2": 100})]
    assert state.history[-1].action == "publish canary at 20%"
    assert state.history[-1].reason.startswith("timings: upload ")


@pytest.mark.parametrize("problem", ["no manifest", "other inputs", "other name"])
def test_a_staged_folder_that_does_not_fit_is_refused_untouched(
    manager: Harness, tmp_path: Path, problem: str
) -> None:
    rollout, fleet, storage = manager
    rollout.promote("m")
    fleet.calls.clear()
    before = load_state(storage, "m")
    config = ModelConfig(name="other" if problem == "other name" else "m")
    if problem == "other inputs":
        config.input.add(name="images", data_type=model_config_pb2.TYPE_FP32, dims=[3, 32, 32])
    staged = staged_version(tmp_path, "3", config)
    if problem == "no manifest":
        (staged / "3" / "manifest.json").unlink()
    error = IncompatibleModelError if problem == "other inputs" else InvalidInputError
    with pytest.raises(error):
        rollout.publish("m", "3", staged=staged)
    assert load_state(storage, "m") == before and fleet.calls == []
    assert not (tmp_path / "m.versions" / "3").exists()


@pytest.mark.parametrize("undo", ["finished", "timed out", "interrupted too"])
def test_an_interrupted_publish_says_how_its_undo_went(
    manager: Harness, tmp_path: Path, undo: str
) -> None:
    rollout, fleet, storage = manager
    rollout.promote("m")
    before = load_state(storage, "m")
    fleet.raise_next.append(KeyboardInterrupt())  # during the load
    if undo == "timed out":
        fleet.raise_next.append(VersionNotReadyError("version 3 LOADING after 300s"))
    elif undo == "interrupted too":
        fleet.raise_next.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as interrupted:
        rollout.publish("m", "3", staged=staged_version(tmp_path, "3"))
    [note] = interrupted.value.__notes__
    assert load_state(storage, "m") == before
    kept = (tmp_path / "m.versions" / "3").exists()
    if undo == "finished":
        assert note.startswith("publish undone: version 3 unloaded and removed")
        assert not kept and rollout.ledger.pending_publish("m") is None
    else:
        # The line must not claim that nothing was kept: the files and the journal stay.
        assert note.startswith("publish not undone yet (") and note.endswith("; run reconcile")
        assert kept and rollout.ledger.pending_publish("m") is not None


def test_check_publish_refuses_before_any_export(manager: Harness) -> None:
    rollout, _, _ = manager
    with pytest.raises(InvalidInputError, match="already exists"):
        rollout.check_publish("m", "2")
    request = rollout.check_publish("m", "3", canary_weight=5, replace=True)
    assert (request.version, request.weight) == ("3", 5)


def test_a_canary_in_progress_is_replaced_only_when_asked_and_the_history_says_so(
    manager: Harness, tmp_path: Path
) -> None:
    rollout, _fleet, storage = manager
    rollout.set_weight("m", 30)
    before = load_state(storage, "m")
    with pytest.raises(IllegalTransitionError, match=r"canary 2 at 30% in progress.*--replace"):
        rollout.publish("m", "3", staged=staged_version(tmp_path, "3"))
    assert load_state(storage, "m") == before
    assert not (tmp_path / "m.versions" / "3").exists()
    again = staged_version(tmp_path / "again", "3")
    state = rollout.publish("m", "3", staged=again, replace=True)
    assert (state.stable, state.canary, state.weights) == ("1", "3", {"1": 90, "3": 10})
    assert state.history[-1].reason.startswith("replaced canary 2 at 30%; timings: ")


def test_every_recorded_history_entry_is_a_move_the_phase_table_allows(
    manager: Harness, tmp_path: Path
) -> None:
    rollout, _, _ = manager
    rollout.promote("m")
    rollout.set_policy("m", {"latest": 2})
    rollout.publish("m", "3", staged=staged_version(tmp_path, "3"))
    rollout.set_policy("m", None)
    state = rollout.promote("m")
    state = rollout.set_policy("m", {"specific": ["1"]})
    for entry in state.history:
        if entry.to_phase is None:  # a setting: it names no phases
            assert entry.from_phase is None and entry.action.startswith("policy"), entry
            continue
        source = None if entry.from_phase is None else Phase(entry.from_phase)
        check_transition(source, Phase(entry.to_phase), action=entry.action)
    assert [t.kind for t in state.history].count("setting") == 3
