"""TLS options and headers reach the gRPC client; header values never show."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from tritonclient._request import Request
from tritonclient.utils import InferenceServerException

from repo_manager import transport
from repo_manager.errors import (
    InvalidInputError,
    TritonError,
    TritonHungError,
    TritonUnavailableError,
)
from repo_manager.transport import (
    GrpcSecurity,
    expand_urls,
    is_unreachable,
    make_grpc_client,
    parse_headers,
)
from repo_manager.triton import TritonControl
from tests.unit.routing_fakes import UNREACHABLE, make_router, write_state

#: What tritonclient raised for a TLS handshake the server refused (measured, Triton 2.51).
TLS_REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:1: Socket closed"
NOT_READY = "Request for unknown model: 'det' version 2 is not at ready state"

RESTRICTED = (
    "This protocol is restricted, expecting header 'triton-grpc-protocol-repo-manager-control-key'"
)


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


@pytest.mark.parametrize(
    ("status", "message", "unreachable"),
    [
        ("StatusCode.UNAVAILABLE", UNREACHABLE, True),
        ("StatusCode.UNAVAILABLE", TLS_REFUSED, True),
        ("StatusCode.UNAVAILABLE", NOT_READY, False),  # Triton answered: version not ready
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", False),  # late, maybe live
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'det' is not found", False),
        ("StatusCode.INTERNAL", "boom", False),
        # A locked control plane without the key (Triton 2.51's words): it answered.
        ("StatusCode.UNAVAILABLE", RESTRICTED, False),
    ],
)
def test_one_rule_says_when_a_server_is_unreachable(
    status: str, message: str, unreachable: bool
) -> None:
    assert is_unreachable(InferenceServerException(message, status=status)) is unreachable


def test_clients_send_the_control_key_under_the_header_triton_expects_over_grpc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from repo_manager.transport import (
        CONTROL_KEY_ENV,
        CONTROL_KEY_FILE_ENV,
        GRPC_CONTROL_HEADER,
        control_key,
        ensure_control_key,
        restricted_flags,
    )

    assert control_key() is None  # no variable, no file (tests/unit/conftest.py)
    key, kept = ensure_control_key()  # what serve does: a key file of mode 0600
    path = Path(kept)
    assert path.read_text().strip() == key and oct(path.stat().st_mode & 0o777) == "0o600"
    assert control_key() == key and ensure_control_key() == (key, kept)
    monkeypatch.setenv(CONTROL_KEY_ENV, "from-env")
    assert control_key() == "from-env"
    monkeypatch.delenv(CONTROL_KEY_ENV)
    monkeypatch.setenv(CONTROL_KEY_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(InvalidInputError, match="which is missing"):
        control_key()
    assert GRPC_CONTROL_HEADER == "triton-grpc-protocol-repo-manager-control-key"
    assert restricted_flags("k")[0] == (
        "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:"
        "repo-manager-control-key=k"
    )
    with pytest.raises(InvalidInputError):
        restricted_flags("has space")


class _Raising:
    """A tritonclient stand-in whose every call raises ``exc``."""

    def __init__(self, exc: InferenceServerException) -> None:
        self.exc = exc

    def is_server_live(self, **_: Any) -> bool:
        raise self.exc

    def close(self) -> None:
        return None


def test_a_deadline_is_not_unreachable_but_a_hung_server_is_left_out(tmp_path: Path) -> None:
    """A late answer is not "unreachable" (``is_unreachable`` stays False: a slow canary
    must still fall back to stable), but the server that was late is hung for the
    manager (one line naming it and how to leave it out) and out of the Router's rotation
    until a probe answers."""
    late = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    assert not is_unreachable(late)
    control = TritonControl("a:1")
    control._client.close()
    control._client = _Raising(late)
    with pytest.raises(TritonHungError, match="a:1 did not answer within 10s") as info:
        control.check_reachable()
    assert "leave it out with --url" in str(info.value)
    control._client = _Raising(
        InferenceServerException(UNREACHABLE, status="StatusCode.UNAVAILABLE")
    )
    with pytest.raises(TritonUnavailableError, match="Triton unreachable at a:1"):
        control.check_reachable()

    # Version 2 is late on a:1 only: the request moves to b:1 for the same version.
    write_state(tmp_path, {"1": 0, "2": 100}, generation=1)
    router, clients = make_router(tmp_path, ["a:1", "b:1"])
    clients[0].fail["2"] = late
    with router:
        results = [router.infer([]) for _ in range(4)]
    assert [(r.version, r.fallback) for r in results] == [("2", False)] * 4
    assert clients[0].calls == ["2"]  # left out after its first miss


def test_a_refusal_with_an_empty_message_is_still_one_line_naming_the_server() -> None:
    control = TritonControl("a:1")
    control._client.close()
    control._client = _Raising(InferenceServerException(""))  # no message, no status
    with pytest.raises(TritonError, match=r"^Triton at a:1 refused to answer: no message"):
        control.check_reachable()
