"""The watch server survives its clients: bounded connections, models that exist only,
validated arguments, one log line per kind of error (the floods at full size are in
tests/integration/test_watch_flood.py)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from repo_manager.storage import LocalStorage
from repo_manager.watch import WatchLimits, WatchServer
from repo_manager.watch.http import ErrorLog
from tests.eventually import eventually
from tests.unit.routing_fakes import MODEL, write_state
from tests.unit.test_watch import _get, watching_router


class CountingStorage(LocalStorage):
    """A folder that counts the requests a storage would get."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.requests: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.requests[name] = self.requests.get(name, 0) + 1

    def list_dir(self, key: str) -> list[str]:
        self._count("list_dir")
        return super().list_dir(key)

    def change_token(self, key: str) -> Any:
        self._count("change_token")
        return super().change_token(key)

    def read_bytes(self, key: str) -> bytes | None:
        self._count("read_bytes")
        return super().read_bytes(key)


def start(storage: LocalStorage, **kw: Any) -> WatchServer:
    kw.setdefault("poll_interval", 0.05)
    return WatchServer(storage, CollectorRegistry(), **kw).start(0, "127.0.0.1")


@pytest.fixture
def storage(repo: Path) -> CountingStorage:
    return CountingStorage(repo)


@pytest.fixture
def server(storage: CountingStorage) -> Iterator[WatchServer]:
    started = start(storage)
    try:
        yield started
    finally:
        started.shutdown()


def get(server: WatchServer, path: str) -> tuple[int, bytes]:
    return _get(f"http://127.0.0.1:{server.port}{path}")


def test_an_unknown_model_is_404_and_costs_no_polling_nor_label(
    server: WatchServer, storage: CountingStorage
) -> None:
    for number in range(200):
        status, body = get(server, f"/watch/nobody-{number}?after=0&wait=0")
        assert status == 404 and b"no model" in body
    assert server.hub.subscribers() == {}
    _, metrics = get(server, "/metrics")
    assert b"nobody" not in metrics
    # One listing told all 200 names apart (they came within the relist interval), and
    # nothing was polled or read for them.
    assert storage.requests.get("list_dir", 0) <= 2
    assert storage.requests.get("read_bytes", 0) == 0
    assert storage.requests.get("change_token", 0) == 0


def test_a_model_published_after_a_miss_is_found_within_the_relist_interval(
    server: WatchServer, repo: Path
) -> None:
    assert get(server, "/watch/later?wait=0")[0] == 404
    write_state(repo, {"1": 100}, generation=1, model="later")
    assert eventually(lambda: get(server, "/watch/later?wait=0")[0] == 200, 5, every=0.2)


@pytest.mark.parametrize(
    "query", ["wait=nan", "wait=inf", "wait=-1", "wait=301", "wait=x", "after=-2", "after=1.5"]
)
def test_bad_wait_or_after_is_400(server: WatchServer, query: str) -> None:
    started = time.monotonic()
    status, _ = get(server, f"/watch/{MODEL}?{query}")
    assert status == 400 and time.monotonic() - started < 2
    assert server.subscribed == 0


def test_beyond_the_connection_limit_new_clients_get_503_and_routers_keep_their_pushes(
    repo: Path, storage: CountingStorage
) -> None:
    server = start(storage, limits=WatchLimits(max_connections=4, max_pending=2, head_timeout=0.5))
    idle: list[socket.socket] = []
    try:
        with watching_router(repo, server) as router:
            for _ in range(2):  # idle connections take the pending slots
                idle.append(socket.create_connection(("127.0.0.1", server.port)))
            assert eventually(lambda: server.pending == 2, 5)
            assert get(server, "/metrics")[0] == 503
            write_state(repo, {"1": 50, "2": 50}, generation=2)
            assert router.wait_for_generation(2, timeout=1.0)
            assert server.refused >= 1
            # Idle ones hold a slot only for the head timeout, then the port answers again.
            assert eventually(lambda: server.pending == 0, 5)
            assert get(server, "/metrics")[0] == 200
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()


def test_the_subscriber_limit_answers_503(repo: Path, storage: CountingStorage) -> None:
    server = start(storage, limits=WatchLimits(max_subscribers=1))
    try:
        with watching_router(repo, server):
            assert get(server, f"/watch/{MODEL}?after=0&wait=0")[0] == 503
    finally:
        server.shutdown()


def test_limits_are_fitted_below_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    fitted = WatchLimits().fitted()
    assert fitted.max_connections == 1024 - 256
    assert fitted.max_subscribers <= fitted.max_connections
    assert fitted.max_pending <= fitted.max_connections
    with pytest.raises(ValueError):
        WatchLimits(max_connections=0)


def test_errors_are_logged_once_per_kind_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = ErrorLog(logging.getLogger("test.watch"), interval=60)
    with caplog.at_level(logging.WARNING, logger="test.watch"):
        for _ in range(1000):
            log("OSError", "[Errno 24] Too many open files")
        log("ConnectionResetError", "reset")
    assert len(caplog.records) == 2
    log.interval = 0
    with caplog.at_level(logging.WARNING, logger="test.watch"):
        log("OSError", "again")
    assert "and 999 more" in caplog.records[-1].getMessage()


def test_the_library_binds_loopback_by_default_like_the_cli(repo: Path) -> None:
    from repo_manager.metrics import start_metrics_server
    from repo_manager.server import free_port

    server = WatchServer(LocalStorage(repo), CollectorRegistry()).start(0)
    try:
        assert server._server is not None
        assert server._server.sockets[0].getsockname()[0] == "127.0.0.1"
    finally:
        server.shutdown()
    metrics = start_metrics_server(free_port(), registry=CollectorRegistry())
    try:
        assert metrics.server_address[0] == "127.0.0.1"
    finally:
        metrics.shutdown()
        metrics.server_close()
