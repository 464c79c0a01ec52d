"""Following the routing table: changes reach a live Router, bad documents are outlived."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from repo_manager import RoutingError
from repo_manager.state import state_key
from repo_manager.storage import LocalStorage
from tests.unit.routing_fakes import MODEL, make_router, write_state


def test_weight_change_written_by_the_manager_reaches_a_live_router(repo: Path) -> None:
    router, _ = make_router(repo, poll_interval=0.02)
    with router:
        assert router.table is not None and router.table.weights == {"1": 90, "2": 10}
        write_state(repo, {"1": 40, "2": 60}, generation=2)
        assert router.wait_for_generation(2, timeout=1.0)
        assert router.table.weights == {"1": 40, "2": 60}
        assert router.plan.thresholds == (40.0,)


def test_corrupt_or_missing_table_keeps_the_last_good_one(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    router, _ = make_router(repo, poll_interval=10)
    path = repo / state_key(MODEL)
    with router, caplog.at_level(logging.WARNING, logger="repo_manager.routing"):
        path.write_text("{not json")
        assert router.refresh() == router.table and router.table is not None
        assert router.table.generation == 1
        path.write_text(json.dumps({"weights": {"1": 1}}))  # no model: corrupt too
        router.refresh()
        path.unlink()
        router.refresh()
        assert router.table is not None and router.table.weights == {"1": 90, "2": 10}
        write_state(repo, {"1": 50, "2": 50}, generation=3)
        assert router.refresh() is not None and router.table.generation == 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "corrupt routing table" in messages and "missing" in messages


def test_an_unchanged_file_is_not_read_again(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    router, _ = make_router(repo, poll_interval=10)
    reads: list[str] = []
    original = LocalStorage.read_bytes

    def counting_read(self: LocalStorage, key: str) -> bytes | None:
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(LocalStorage, "read_bytes", counting_read)
    with router:
        for _ in range(5):
            router.refresh()
    assert reads == []


def test_router_without_a_table_waits_for_one_and_allows_explicit_versions(
    tmp_path: Path,
) -> None:
    router, _ = make_router(tmp_path, poll_interval=0.02)
    with router:
        assert router.table is None
        with pytest.raises(RoutingError, match="no routing table"):
            router.infer([])
        assert router.infer([], version="3").version == "3"
        write_state(tmp_path, {"1": 100}, generation=1, canary=None)
        assert router.wait_for_generation(1, timeout=1.0)
        assert router.infer([]).version == "1"
