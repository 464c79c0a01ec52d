"""S3 failures a user meets first: one clear line each, the right exit code, no secret."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo_manager.server import free_port
from tests.integration.conftest import CLI, S3_SECRET, MotoServer, start_moto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def strict_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server that checks credentials (every key we have is unknown to it)."""
    server = start_moto(
        tmp_path_factory.mktemp("strict-moto") / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="0"
    )
    try:
        yield server
    finally:
        server.stop()


def run(endpoint: str, repository: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "--repository", repository, "--s3-endpoint", endpoint, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr
    assert S3_SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("command", [("status",), ("reconcile",), ("set-weight", "m", "10")])
def test_wrong_credentials_give_one_line_without_the_secret(
    strict_moto: MotoServer, s3_env: dict[str, str], command: tuple[str, ...]
) -> None:
    done = run(strict_moto.endpoint, "s3://models/repo", *command)
    assert_one_line(done, 1, "refused the credentials", "s3://models/repo", strict_moto.endpoint)


def test_missing_bucket_gives_one_line(moto: MotoServer, s3_env: dict[str, str]) -> None:
    done = run(moto.endpoint, "s3://no-such-bucket/repo", "status")
    assert_one_line(done, 2, "bucket no-such-bucket does not exist", moto.endpoint)


def test_unreachable_endpoint_gives_one_line(s3_env: dict[str, str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = run(endpoint, "s3://models/repo", "status")
    assert_one_line(done, 1, "cannot reach the S3 endpoint", endpoint)


def test_publish_with_wrong_credentials_logs_no_secret(
    strict_moto: MotoServer, s3_env: dict[str, str], weights: Path, tmp_path: Path
) -> None:
    # -v prints every step; REPO_MANAGER_DEBUG is off: still one line, still no secret.
    done = run(
        strict_moto.endpoint,
        "s3://models/repo",
        "publish",
        "m",
        "1",
        "--weights",
        str(weights),
        "-v",
    )
    assert done.returncode == 1
    assert S3_SECRET not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: S3 refused the credentials")


@pytest.mark.parametrize(
    ("repository", "message"),
    [("s3://", "invalid S3 repository"), ("s3:///prefix", "invalid S3 repository")],
)
def test_malformed_s3_repository_is_bad_input(
    s3_env: dict[str, str], repository: str, message: str
) -> None:
    done = run("http://127.0.0.1:9", repository, "status")
    assert_one_line(done, 2, message)


def test_malformed_endpoint_is_bad_input(s3_env: dict[str, str]) -> None:
    done = run("127.0.0.1:9000", "s3://models/repo", "status")
    assert_one_line(done, 2, "invalid S3 endpoint")
