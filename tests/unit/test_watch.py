"""The manager's watch endpoint and a Router following it: pushes instead of storage polls,
storage again while the endpoint is gone, back to the watch when it returns, and never an
older table. The manager as its own process (and S3) is in tests/integration/test_watch.py.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from repo_manager import Router
from repo_manager.errors import InvalidInputError
from repo_manager.metrics import RouterMetrics
from repo_manager.server import free_port
from repo_manager.state import RoutingTable
from repo_manager.storage import LocalStorage
from repo_manager.watch import WatchServer
from tests.eventually import eventually
from tests.unit.published import write_published
from tests.unit.routing_fakes import MODEL, make_router, write_state


def start_server(repo: Path, port: int = 0, **kw: Any) -> WatchServer:
    kw.setdefault("poll_interval", 0.05)
    return WatchServer(LocalStorage(repo), CollectorRegistry(), **kw).start(port, "127.0.0.1")


@pytest.fixture
def server(repo: Path) -> Iterator[WatchServer]:
    started = start_server(repo)
    try:
        yield started
    finally:
        started.shutdown()


def url(server: WatchServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def watching_router(repo: Path, server: WatchServer, **kw: Any) -> Router:
    """A Router that could only learn of a change through the watch (storage fallback of
    an hour), once it follows it."""
    kw.setdefault("fallback_interval", 3600)
    router, _ = make_router(repo, watch_url=url(server), poll_interval=0.02, **kw)
    assert eventually(lambda: router.watching, 5), "the Router never subscribed"
    return router


def sources(router: Router) -> tuple[dict[str, int], int]:
    return router.metrics.table_source(MODEL).snapshot()


def table(generation: int, weights: dict[str, int]) -> RoutingTable:
    return RoutingTable(model=MODEL, stable="1", canary="2", weights=weights, generation=generation)


def test_a_router_follows_a_table_another_process_wrote_through_the_watch(
    repo: Path, server: WatchServer
) -> None:
    with watching_router(repo, server) as router:
        storage = router._table._storage
        reads: list[str] = []
        original = storage.change_token
        storage.change_token = lambda key: reads.append(key) or original(key)  # type: ignore[method-assign]
        write_state(repo, {"1": 40, "2": 60}, generation=2)
        assert router.wait_for_generation(2, timeout=2.0)
        assert router.table is not None and router.table.weights == {"1": 40, "2": 60}
        time.sleep(0.3)  # 15 of its polling periods: none of them reads storage
        assert reads == []
        assert sources(router) == ({"watch": 1, "storage": 0}, 0)
        assert server.hub.subscribers() == {MODEL: 1}
    assert eventually(lambda: server.hub.subscribers() == {MODEL: 0}, 2)


def test_the_manager_pushes_a_table_it_records_at_once_not_at_its_next_poll(repo: Path) -> None:
    server = start_server(repo, poll_interval=3600)
    try:
        with watching_router(repo, server) as router:
            write_state(repo, {"1": 30, "2": 70}, generation=2)
            started = time.monotonic()
            server.offer(table(2, {"1": 30, "2": 70}))
            assert router.wait_for_generation(2, timeout=1.0)
            assert time.monotonic() - started < 0.5
    finally:
        server.shutdown()


def test_without_the_watch_the_router_polls_storage_and_comes_back_when_it_returns(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(repo)
    port = server.port
    with caplog.at_level(logging.INFO, logger="repo_manager.routing"):
        router = watching_router(repo, server, fallback_interval=0.05)
        with router:
            server.shutdown()  # the manager is gone
            assert eventually(lambda: not router.watching, 2)
            write_state(repo, {"1": 20, "2": 80}, generation=2)  # another manager writes
            assert router.wait_for_generation(2, timeout=2.0)
            time.sleep(1.0)  # several reconnect attempts fail meanwhile
            assert sources(router) == ({"watch": 0, "storage": 1}, 1)
            server = start_server(repo, port)
            try:
                assert eventually(lambda: router.watching, 10), "never resubscribed"
                assert sources(router) == ({"watch": 1, "storage": 0}, 1)
                write_state(repo, {"1": 10, "2": 90}, generation=3)
                assert router.wait_for_generation(3, timeout=2.0)
                lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
            finally:
                router.close()
                server.shutdown()
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING  # said once per outage
    assert "polling storage every ~0.05 s" in lost[0].getMessage()
    assert any("through the watch" in r.getMessage() for r in caplog.records)


def test_a_router_that_missed_generations_catches_up_to_the_newest_only(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(repo)
    port = server.port
    logs = caplog.at_level(logging.INFO, logger="repo_manager.routing.table")
    with logs, watching_router(repo, server) as router:
        server.shutdown()
        assert eventually(lambda: not router.watching, 2)
        for generation in (2, 3, 4):
            write_state(repo, {"1": 90 - generation, "2": 10 + generation}, generation)
        server = start_server(repo, port)
        try:
            assert router.wait_for_generation(4, timeout=10.0)
        finally:
            server.shutdown()
    installed = [r.getMessage() for r in caplog.records if "routing generation" in r.getMessage()]
    assert [m.split("generation ")[1].split(":")[0] for m in installed] == ["1", "4"]


def test_an_older_table_is_never_installed_whichever_path_brings_it(
    repo: Path, server: WatchServer
) -> None:
    write_state(repo, {"1": 50, "2": 50}, generation=5)
    with watching_router(repo, server) as router:
        assert router.wait_for_generation(5, timeout=2.0)
        watcher = router._table
        assert not watcher.offer(table(4, {"1": 100, "2": 0}))  # a late push
        assert not watcher.offer(table(5, {"1": 0, "2": 100}))  # the same generation again
        write_state(repo, {"1": 99, "2": 1}, generation=3)  # an old document read by a poll
        assert router.refresh() is not None
        assert router.table is not None and router.table.generation == 5
        assert router.table.weights == {"1": 50, "2": 50}
        assert not server.hub.offer(table(4, {"1": 100, "2": 0}))  # the manager refuses too
        assert server.hub.latest(MODEL) == router.table


def test_the_watch_url_comes_from_the_environment(
    repo: Path, server: WatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPO_MANAGER_WATCH_URL", url(server))
    router, _ = make_router(repo)
    with router:
        assert eventually(lambda: router.watching, 5)
    router, _ = make_router(repo, watch_url="")  # "" turns it off
    with router:
        assert router._table.subscriber is None
    with pytest.raises(InvalidInputError, match="invalid watch URL"):
        make_router(repo, watch_url="manager:9400")


def test_an_unreachable_watch_at_start_leaves_the_router_on_storage_and_counts_it(
    repo: Path,
) -> None:
    router, _ = make_router(
        repo,
        watch_url=f"http://127.0.0.1:{free_port()}",
        poll_interval=0.02,
        fallback_interval=0.05,
    )
    with router:
        assert eventually(lambda: sources(router)[1] == 1, 5)
        assert not router.watching
        write_state(repo, {"1": 60, "2": 40}, generation=2)
        assert router.wait_for_generation(2, timeout=2.0)
    assert sources(router)[0] == {"watch": 0, "storage": 0}  # a closed Router counts nowhere


def _get(address: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(address, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_port_serves_metrics_long_polls_and_refuses_bad_names(
    repo: Path, server: WatchServer
) -> None:
    base = url(server)
    status, body = _get(f"{base}/watch/{MODEL}?after=0&wait=5")
    assert status == 200 and json.loads(body)["generation"] == 1
    started = time.monotonic()
    status, body = _get(f"{base}/watch/{MODEL}?after=1&wait=0.2")
    assert status == 204 and 0.15 < time.monotonic() - started < 2
    assert _get(f"{base}/watch/..%2Fetc")[0] == 400
    assert _get(f"{base}/nothing")[0] == 404
    with watching_router(repo, server):
        status, body = _get(f"{base}/metrics")
        assert status == 200
        assert f'repo_manager_watch_subscribers{{model="{MODEL}"}} 1.0' in body.decode()


def test_a_taken_port_is_one_clear_error(server: WatchServer, repo: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"cannot serve metrics on 127\.0\.0\.1"):
        start_server(repo, server.port)


def test_router_metrics_expose_the_table_source(repo: Path, server: WatchServer) -> None:
    metrics = RouterMetrics(CollectorRegistry())
    with watching_router(repo, server, metrics=metrics):
        assert metrics.registry is not None
        value = metrics.registry.get_sample_value(
            "repo_manager_router_table_source", {"model": MODEL, "source": "watch"}
        )
        assert value == 1
        fallbacks = metrics.registry.get_sample_value(
            "repo_manager_router_watch_fallbacks_total", {"model": MODEL}
        )
        assert fallbacks == 0


def test_a_move_the_long_running_manager_records_is_pushed_through_its_hook(repo: Path) -> None:
    from repo_manager.repository import ModelRepository
    from repo_manager.rollout import RolloutManager
    from repo_manager.triton import TritonFleet

    class NoServers(TritonFleet):
        """set-weight writes the table and calls no server once the fleet answers."""

        def check_reachable(self) -> None:
            return None

    write_published(repo, MODEL, ["1", "2"])
    server = start_server(repo, poll_interval=3600)  # only the hook can tell it
    manager = RolloutManager(
        ModelRepository(LocalStorage(repo)),
        NoServers(["127.0.0.1:1"]),
        recorded=lambda state: server.offer(state.routing_table()),
    )
    try:
        with watching_router(repo, server) as router:
            moved = manager.set_weight(MODEL, 35)
            assert router.wait_for_generation(moved.generation, timeout=1.0)
            assert router.table is not None and router.table.weights == {"1": 65, "2": 35}
    finally:
        manager.fleet.close()
        server.shutdown()
