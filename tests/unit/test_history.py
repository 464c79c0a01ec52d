"""The recorded history: who wrote each entry, what an analysis step saw, and the bound on
the state document (the newest entries; the archive object beside it keeps the rest)."""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path

import pytest

from repo_manager.cli.render import history_text
from repo_manager.errors import InvalidInputError
from repo_manager.history import (
    HISTORY_LIMIT,
    archive_key,
    entry_document,
    read_history,
    recorded_by,
)
from repo_manager.phases import Phase
from repo_manager.rollout.ledger import Ledger, with_canary_at
from repo_manager.state import RolloutState, load_state, state_key
from repo_manager.storage import LocalStorage
from tests.unit.test_analysis_step import PLAN, ScriptedProvider
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager


def record_moves(ledger: Ledger, weights: list[int]) -> RolloutState:
    """A published model (stable 1, canary 2) and one set-weight per ``weights``."""
    first = RolloutState(model="m", phase=Phase.INITIALIZED, stable="1", weights={"1": 100})
    state = ledger.record(None, first, action="publish stable")
    canary = with_canary_at(state, 10, phase=Phase.PROGRESSING, canary="2")
    state = ledger.record(state, canary, action="publish canary at 10%")
    for weight in weights:
        new = with_canary_at(state, weight, phase=Phase.PROGRESSING)
        state = ledger.record(state, new, action=f"set-weight {weight}%", reason=f"to {weight}")
    return state


def test_every_entry_names_who_recorded_it(tmp_path: Path) -> None:
    state = record_moves(Ledger(LocalStorage(tmp_path)), [20])
    expected = f"{getpass.getuser()}@{socket.gethostname()}"
    assert recorded_by() == expected
    assert [t.who for t in state.history] == [expected] * 3
    on_disk = json.loads((tmp_path / state_key("m")).read_text())
    assert on_disk["history"][-1]["who"] == expected


def test_the_state_keeps_the_newest_entries_and_the_archive_the_rest(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    weights = [11, 12, 13, 14, 15, 16]
    state = record_moves(Ledger(storage, history_limit=3), weights)
    everything = ["publish stable", "publish canary at 10%"] + [f"set-weight {w}%" for w in weights]
    # The document Routers read holds the newest three only.
    assert [t.action for t in state.history] == everything[-3:]
    assert state.archived == 5 and state.generation == 8
    persisted = load_state(storage, "m")
    assert persisted is not None and persisted.history == state.history
    archive = (tmp_path / archive_key("m")).read_text().splitlines()
    assert [json.loads(line)["action"] for line in archive] == everything[:5]
    # history reads both, oldest first.
    assert [t.action for t in read_history(storage, "m")] == everything
    assert [t.action for t in read_history(storage, "m", limit=2)] == everything[-2:]
    assert [t.action for t in read_history(storage, "m", limit=6)] == everything[-6:]


def test_a_manager_killed_between_archive_and_state_leaves_no_duplicate(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    ledger = Ledger(storage, history_limit=2)
    state = record_moves(ledger, [20, 30])  # 4 entries: 2 archived
    # The archive got an entry whose state write never happened (the manager died).
    stray = (tmp_path / archive_key("m")).read_text() + json.dumps({"action": "lost"}) + "\n"
    (tmp_path / archive_key("m")).write_text(stray)
    assert [t.action for t in read_history(storage, "m")][-1] == "set-weight 30%"
    new = with_canary_at(state, 40, phase=Phase.PROGRESSING)
    ledger.record(state, new, action="set-weight 40%")
    actions = [t.action for t in read_history(storage, "m")]
    assert actions == [
        "publish stable",
        "publish canary at 10%",
        "set-weight 20%",
        "set-weight 30%",
        "set-weight 40%",
    ]
    assert len((tmp_path / archive_key("m")).read_text().splitlines()) == 3


def test_the_default_bound_is_the_one_constant(tmp_path: Path) -> None:
    assert Ledger(LocalStorage(tmp_path)).history_limit == HISTORY_LIMIT == 1000


def test_a_state_written_before_who_and_the_archive_still_loads(tmp_path: Path) -> None:
    document = {
        "schema": 1,
        "model": "m",
        "phase": "initialized",
        "stable": "1",
        "weights": {"1": 100},
        "generation": 1,
        "history": [
            {
                "at": "2026-12-01T10:00:00.000+00:00",
                "action": "publish stable",
                "from_phase": None,
                "to_phase": "initialized",
                "stable": "1",
                "canary": None,
                "weights": {"1": 100},
            }
        ],
    }
    (tmp_path / state_key("m")).write_text(json.dumps(document))
    entries = read_history(LocalStorage(tmp_path), "m")
    assert [(t.action, t.who, t.details) for t in entries] == [("publish stable", "", None)]


def test_history_of_an_unknown_model_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="never published"):
        read_history(LocalStorage(tmp_path), "m")


def test_each_analysis_step_records_its_readings_gates_and_bounds(manager: Harness) -> None:
    rollout, _, _ = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    baseline = rollout.advance("m", provider).history[-1]
    assert baseline.details is not None
    assert baseline.details["analysis"]["outcome"] == "baseline"
    passed = rollout.advance("m", provider).history[-1]
    provider.interval("failing")
    failed = rollout.advance("m", provider).history[-1]
    assert passed.details is not None and failed.details is not None
    step = passed.details["analysis"]
    assert (step["outcome"], step["weight"], step["step"]) == ("pass", 10, 0)
    assert step["bounds"]["max_error_rate"] == 0.01 and step["bounds"]["max_latency_ratio"] == 1.5
    triton = step["readings"]["triton"]
    assert triton["canary"] == {
        "version": "2",
        "requests": 100.0,
        "failures": 0.0,
        "error_rate": 0.0,
        "latency_ms": pytest.approx(10.0),
    }
    assert triton["stable"]["version"] == "1"
    bad = failed.details["analysis"]
    assert (bad["outcome"], bad["weight"], bad["failed_checks"]) == ("fail", 25, 1)
    assert bad["readings"]["triton"]["canary"]["error_rate"] == pytest.approx(0.2)
    gate = next(g for g in bad["gates"] if g["name"] == "max_error_rate[triton]")
    assert gate["passed"] is False and gate["bound"] == 0.01
    assert "max_error_rate[triton]: 0.2 (bound 0.01) FAILED" in failed.reason


def test_a_stopped_analysis_says_what_stopped_it(manager: Harness) -> None:
    rollout, _, _ = manager
    rollout.start_analysis("m", PLAN)
    state = rollout.stop_analysis("m", "stopped by an error: Triton unreachable")
    assert state is not None and state.phase is Phase.ANALYZING
    last = state.history[-1]
    assert last.action == "analysis stopped at 10%"
    assert last.reason.startswith("stopped by an error: Triton unreachable")
    assert state.weights == {"1": 90, "2": 10}
    rollout.set_weight("m", 30)  # a person took over: nothing to stop
    assert rollout.stop_analysis("m", "again") is None


def test_history_text_shows_time_action_phases_weights_who_and_why(tmp_path: Path) -> None:
    state = record_moves(Ledger(LocalStorage(tmp_path)), [20])
    text = history_text([entry_document(t) for t in state.history])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["TIME", "(UTC)", "ACTION", "PHASE"]
    row = next(line for line in lines if "set-weight 20%" in line)
    assert "progressing -> progressing" in row and "v1 80% v2 20%" in row
    assert row.rstrip().endswith(recorded_by())
    assert lines[lines.index(row) + 1].strip() == "why: to 20"
    assert "- -> initialized" in lines[1]
