"""TLS options and headers reach the gRPC client; header values never show."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from tritonclient._request import Request

from repo_manager import transport
from repo_manager.errors import InvalidInputError
from repo_manager.transport import GrpcSecurity, expand_urls, make_grpc_client, parse_headers


def test_headers_are_sent_on_every_call_with_lowercase_names() -> None:
    client = make_grpc_client(
        "127.0.0.1:1", GrpcSecurity(headers=parse_headers(["Authorization=Bearer t0ken"]))
    )
    request = Request({"existing": "1"})
    client._call_plugin(request)
    assert request.headers == {"existing": "1", "authorization": "Bearer t0ken"}
    client.close()


def test_tls_files_reach_the_tritonclient_constructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("PEM")
    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, url: str, **kwargs: Any) -> None:
            seen.update(kwargs, url=url)

    monkeypatch.setattr(transport.grpcclient, "InferenceServerClient", Recorder)
    security = GrpcSecurity(
        ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "cert.pem"), key=str(tmp_path / "key.pem")
    )
    make_grpc_client("triton:8001", security)
    assert seen == {
        "url": "triton:8001",
        "ssl": True,
        "root_certificates": str(tmp_path / "ca.pem"),
        "private_key": str(tmp_path / "key.pem"),
        "certificate_chain": str(tmp_path / "cert.pem"),
    }


def test_plain_security_makes_an_insecure_client() -> None:
    assert GrpcSecurity().client_kwargs() == {}
    assert GrpcSecurity(tls=True).client_kwargs()["ssl"] is True


def test_repr_names_headers_but_never_their_values() -> None:
    text = repr(GrpcSecurity(headers={"authorization": "Bearer s3cret"}))
    assert "authorization" in text and "s3cret" not in text


@pytest.mark.parametrize("bad", ["novalue-TOKEN", "=TOKEN", "a b=TOKEN", "x:y=TOKEN"])
def test_malformed_header_is_bad_input_without_echoing_the_value(bad: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_headers([bad])
    assert "token" not in str(caught.value).lower()


def test_cert_without_key_and_missing_files_are_bad_input(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("PEM")
    with pytest.raises(InvalidInputError, match="together"):
        GrpcSecurity(cert=str(tmp_path / "cert.pem"))
    with pytest.raises(InvalidInputError, match="not found"):
        GrpcSecurity(ca=str(tmp_path / "missing.pem"))


def test_dns_names_expand_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        assert host == "triton.internal"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    urls = ["triton.internal:8001", "10.0.0.9:8001"]
    assert expand_urls(urls, resolve=False) == urls
    assert expand_urls(urls, resolve=True) == ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.9:8001"]
    with pytest.raises(InvalidInputError):
        expand_urls(["no-port"], resolve=True)
