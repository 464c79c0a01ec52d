"""dns:// fleets: one name, one server per address, followed as the name's records change.

The resolver is injected (or ``socket.getaddrinfo`` patched) so records can come and go;
tests/integration/test_observability.py resolves ``localhost`` against the real Triton.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from repo_manager import FleetResolutionError, Router, TritonUnavailableError
from repo_manager.discovery import has_dns, resolve_urls
from repo_manager.errors import InvalidInputError
from repo_manager.triton import TritonFleet
from tests.unit.routing_fakes import make_router, write_state


class Records:
    """A DNS zone the test edits: name -> addresses (missing name: NXDOMAIN)."""

    def __init__(self, **zone: list[str]) -> None:
        self.zone = {name.replace("_", "."): addresses for name, addresses in zone.items()}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int, **_: Any) -> list[Any]:
        self.asked.append(host)
        if host not in self.zone:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.zone[host]
        ]


def test_a_dns_url_expands_to_every_address_once_and_plain_urls_pass_through() -> None:
    records = Records(triton_svc=["10.0.0.1", "10.0.0.2", "10.0.0.1", "fd00::7"])
    urls = ["dns://triton.svc:8001", "10.0.0.2:8001", "other:9001"]
    assert has_dns(urls) and not has_dns(urls[1:])
    assert resolve_urls(urls, resolver=records) == [
        "10.0.0.1:8001",
        "10.0.0.2:8001",
        "[fd00::7]:8001",
        "other:9001",
    ]
    assert records.asked == ["triton.svc"]  # plain names are not looked up


def test_a_name_that_does_not_resolve_is_one_typed_line_naming_it() -> None:
    with pytest.raises(
        FleetResolutionError, match=r"cannot resolve Triton fleet name gone\.svc"
    ) as e:
        resolve_urls(["dns://gone.svc:8001"], resolver=Records())
    assert isinstance(e.value, TritonUnavailableError) and e.value.exit_code == 1
    assert "\n" not in str(e.value)
    with pytest.raises(FleetResolutionError, match="resolved to no address"):
        resolve_urls(["dns://empty.svc:8001"], resolver=Records(empty_svc=[]))


@pytest.mark.parametrize("url", ["dns://triton.svc", "dns://:8001", "triton.svc"])
def test_a_malformed_url_is_bad_input(url: str) -> None:
    with pytest.raises(InvalidInputError, match="HOST:PORT"):
        resolve_urls([url], resolver=Records(triton_svc=["10.0.0.1"]))


def test_a_fleet_keeps_known_servers_adds_new_ones_and_closes_those_gone() -> None:
    fleet = TritonFleet(["10.0.0.1:8001", "10.0.0.2:8001"])
    kept, gone = fleet.servers
    closed: list[str] = []
    gone.close = lambda: closed.append(gone.url)  # type: ignore[method-assign]
    fleet.set_urls(["10.0.0.1:8001", "10.0.0.3:8001"])
    assert fleet.urls == ["10.0.0.1:8001", "10.0.0.3:8001"]
    assert fleet.servers[0] is kept and closed == ["10.0.0.2:8001"]
    fleet.close()


def dns_router(
    repo: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[Router, list[Any], Records]:
    """A Router on ``dns://triton.svc:8001`` (one record, 10.0.0.1) with fake clients."""
    write_state(repo, {"1": 100}, generation=1, canary=None)
    records = Records(triton_svc=["10.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", records)
    router, clients = make_router(repo, ["dns://triton.svc:8001"], **kw)
    return router, clients, records


def test_a_router_follows_the_names_records_and_keeps_the_last_fleet_when_lookup_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router, clients, records = dns_router(tmp_path, monkeypatch, resolve_interval=3600)
    try:
        assert router.urls == ("10.0.0.1:8001",)
        router.infer([])
        records.zone["triton.svc"] = ["10.0.0.1", "10.0.0.2"]  # a replica joins
        assert router.rediscover() == ("10.0.0.1:8001", "10.0.0.2:8001")
        for _ in range(4):
            router.infer([])
        assert [len(c.calls) for c in clients] == [3, 2]  # the newcomer gets its share
        del records.zone["triton.svc"]  # DNS outage: keep serving the last good fleet
        assert router.rediscover() == ("10.0.0.1:8001", "10.0.0.2:8001")
        records.zone["triton.svc"] = ["10.0.0.2"]  # the first replica leaves
        assert router.rediscover() == ("10.0.0.2:8001",)
        router.infer([])
        assert [len(c.calls) for c in clients] == [3, 3]
        assert not clients[0].closed  # requests in flight on it may still finish
        records.zone["triton.svc"] = ["10.0.0.2", "10.0.0.4"]
        router.rediscover()
        assert clients[0].closed  # closed one round later
    finally:
        router.close()
    assert all(c.closed for c in clients)


def test_a_router_polls_the_name_again_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    router, _, records = dns_router(
        tmp_path, monkeypatch, poll_interval=0.02, resolve_interval=0.05
    )
    try:
        records.zone["triton.svc"] = ["10.0.0.5"]
        deadline = time.monotonic() + 5
        while router.urls != ("10.0.0.5:8001",):
            assert time.monotonic() < deadline, router.urls
            time.sleep(0.02)
    finally:
        router.close()
