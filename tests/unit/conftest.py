"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.cache import CACHE_ENV
from repo_manager.transport import CONTROL_KEY_ENV, CONTROL_KEY_FILE_ENV
from tests.conftest import BACKEND_DEFAULTS
from tests.unit.routing_fakes import write_state


@pytest.fixture(autouse=True)
def _real_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests of the export prove the path through torch: no cached ONNX stands in
    (the cache's own tests pass it a folder of their own)."""
    monkeypatch.setenv(CACHE_ENV, "off")
    for name in BACKEND_DEFAULTS:  # the backend's own defaults are what its tests prove
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _no_control_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No control key unless a test gives one (the session sets one for the servers of the
    integration tests), and no key file of the user's own home."""
    for name in (CONTROL_KEY_ENV, CONTROL_KEY_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose routing table sends 90% to version 1 and 10% to version 2."""
    write_state(tmp_path, {"1": 90, "2": 10}, generation=1)
    return tmp_path
