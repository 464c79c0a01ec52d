"""gRPC over mutual TLS to a real tritonserver, with an extra header, from CLI and Router."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repo_manager import GrpcSecurity, Router, TritonUnavailableError
from repo_manager.server import EmbeddedTriton, ServerPorts
from repo_manager.triton import TritonControl
from tests.integration.conftest import CLI, publish_args
from tests.integration.test_rollout import image_input

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@dataclass(kw_only=True, frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all by openssl."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
                 "-out", f"{name}.pem", cwd=d)  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


@pytest.fixture
def tls_server(pki: Pki, tmp_path: Path) -> Iterator[tuple[EmbeddedTriton, Path]]:
    repository = tmp_path / "model_repository"
    repository.mkdir()
    server = EmbeddedTriton(
        repository,
        ports=ServerPorts.free(),
        log_path=tmp_path / "tritonserver.log",
        extra_args=(
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={pki.server_cert}",
            f"--grpc-server-key={pki.server_key}",
            f"--grpc-root-cert={pki.ca}",
        ),
    )
    with server:
        yield server, repository


def test_mutual_tls_and_headers_reach_triton_from_cli_and_router(
    pki: Pki, tls_server: tuple[EmbeddedTriton, Path], weights: Path
) -> None:
    server, repository = tls_server
    mutual = GrpcSecurity(
        ca=str(pki.ca),
        cert=str(pki.client_cert),
        key=str(pki.client_key),
        headers={"x-api-key": "proxy-token"},
    )
    TritonControl(server.grpc_url, security=mutual).check_reachable()
    for wrong in (GrpcSecurity(), GrpcSecurity(ca=str(pki.ca))):  # plain; TLS without client cert
        with pytest.raises(TritonUnavailableError):
            TritonControl(server.grpc_url, security=wrong, request_timeout=3).check_reachable()

    tls_args = [
        "--repository", str(repository), "--url", server.grpc_url,
        "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key), "--header", "x-api-key=proxy-token",
    ]  # fmt: skip
    done = subprocess.run(
        [*CLI, *tls_args, *publish_args("m", "1", weights)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "proxy-token" not in done.stdout + done.stderr
    doc = json.loads(
        subprocess.run(
            [*CLI, *tls_args, "status", "m", "--json"], capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert doc["versions"] == [{"version": "1", "state": "READY"}]

    with Router("m", url=server.grpc_url, repository=repository, security=mutual) as router:
        assert router.infer(image_input()).version == "1"


def test_validate_and_the_golden_gate_speak_mutual_tls_and_headers(
    pki: Pki, tls_server: tuple[EmbeddedTriton, Path], trained_detector: Path, golden_set: Path
) -> None:
    server, repository = tls_server
    tls_args = [
        "--repository", str(repository), "--url", server.grpc_url,
        "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key), "--header", "x-api-key=proxy-token",
    ]  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *tls_args, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
        assert "proxy-token" not in done.stdout + done.stderr
        return done

    cli(*publish_args("shapes", "1", trained_detector))
    gated = cli(*publish_args("shapes", "2", trained_detector), "--golden", str(golden_set))
    assert "published as canary at 10%" in gated.stdout
    report = json.loads(
        cli("validate", "shapes", "2", "--golden", str(golden_set), "--json").stdout
    )
    assert report["passed"] and report["candidate"]["errors"] == 0
