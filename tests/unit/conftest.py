"""Fixtures shared by the unit tests."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from export.cache import CACHE_ENV
from repo_manager.server import free_port
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


Served = list[str]


@pytest.fixture
def http_server() -> Iterator[tuple[str, Served, dict[str, bytes]]]:
    """A loopback server answering what ``responses`` holds per path; records queries."""
    responses: dict[str, bytes] = {}
    seen: Served = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            seen.append(urllib.parse.unquote_plus(parts.query))
            body = responses.get(parts.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen, responses
    finally:
        server.shutdown()
        server.server_close()
