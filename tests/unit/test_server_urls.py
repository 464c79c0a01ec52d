"""The embedded server's URLs follow the address it binds: a wildcard bind is reached
through loopback, a concrete address at itself."""

from __future__ import annotations

import pytest

from repo_manager.server import EmbeddedTriton, ServerPorts, connect_address, free_ports


@pytest.mark.parametrize(
    ("bind", "address"),
    [
        ("127.0.0.1", "127.0.0.1:8001"),
        ("10.0.0.5", "10.0.0.5:8001"),
        ("127.0.0.2", "127.0.0.2:8001"),
        ("0.0.0.0", "127.0.0.1:8001"),
        ("", "127.0.0.1:8001"),
        ("::", "[::1]:8001"),
        ("::1", "[::1]:8001"),
        ("fd00::5", "[fd00::5]:8001"),
        ("triton.local", "triton.local:8001"),
    ],
)
def test_the_address_to_connect_follows_the_bound_host(bind: str, address: str) -> None:
    assert connect_address(bind, 8001) == address


def test_every_url_of_a_server_bound_to_a_concrete_address_names_it() -> None:
    server = EmbeddedTriton(
        "/tmp/none", ports=ServerPorts(http=1, grpc=2, metrics=3), host="10.0.0.5"
    )
    assert server.grpc_url == "10.0.0.5:2"
    assert server.http_url == "10.0.0.5:1"
    assert server.metrics_url == "http://10.0.0.5:3/metrics"
    wildcard = EmbeddedTriton("/tmp/none", ports=ServerPorts(http=1, grpc=2, metrics=3), host="::")
    assert wildcard.grpc_url == "[::1]:2" and wildcard.metrics_url == "http://[::1]:3/metrics"


def test_ports_chosen_together_are_all_different() -> None:
    # Picked one after the other, each released at once, 500 ports held a duplicate in
    # each of 50 tries here, and a server's HTTP and gRPC ports were once the same.
    assert len(set(free_ports(500))) == 500
    ports = ServerPorts.free()
    assert len({ports.http, ports.grpc, ports.metrics}) == 3
