"""A repository is servable before any Triton starts: ``init`` (and ``serve``, which runs it).

Against a real moto S3 server and the real embedded tritonserver: Triton 2.51 refuses an S3
prefix that holds no object ("repository path is not a valid directory"), and a fleet or a
StatefulSet is normally started before the first publish.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest

from repo_manager.server import EmbeddedTriton, ServerPorts
from repo_manager.storage.s3 import SERVABLE_MARKER
from tests.integration.conftest import CLI, S3_SECRET, MotoServer, publish_args, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def empty_bucket(moto: MotoServer, s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    """A bucket that holds no object at all (the repository prefix in it is fresh)."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto.endpoint).create_bucket(Bucket=name)
    return name


def run(
    moto: MotoServer, repository: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "--repository", repository, "--s3-endpoint", moto.endpoint, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def objects(moto: MotoServer, bucket: str) -> dict[str, tuple[str, str]]:
    client = boto3.client("s3", endpoint_url=moto.endpoint)
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: (o["ETag"], str(o["LastModified"])) for o in listing}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_init_makes_a_fresh_prefix_servable_and_is_idempotent(
    moto: MotoServer, empty_bucket: str, tmp_path: Path
) -> None:
    repository = f"s3://{empty_bucket}/fresh"
    triton = f"s3://{moto.endpoint}/{empty_bucket}/fresh"
    done = run(moto, repository, "init")
    assert done.returncode == 0, done.stderr
    assert repository in done.stdout and S3_SECRET not in done.stdout + done.stderr
    first = objects(moto, empty_bucket)
    assert list(first) == [f"fresh/{SERVABLE_MARKER}"]
    # A second init (a restarted pod's initContainer) changes nothing.
    again = run(moto, repository, "init")
    assert again.returncode == 0, again.stderr
    assert objects(moto, empty_bucket) == first
    server = EmbeddedTriton(triton, ports=ServerPorts.free(), log_path=tmp_path / "triton.log")
    with server:  # ready, or it raises
        assert server.is_ready()


def test_serve_on_a_fresh_prefix_becomes_ready_and_takes_a_first_publish(
    moto: MotoServer, empty_bucket: str, weights: Path, tmp_path: Path
) -> None:
    repository = f"s3://{empty_bucket}/fresh"
    ports = ServerPorts.free()
    log = tmp_path / "serve.stderr"
    command = [
        *CLI,
        "--repository",
        repository,
        "--s3-endpoint",
        moto.endpoint,
        "serve",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        f"--log-file={tmp_path / 'triton.log'}",
    ]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 45
        while not ready(ports.http):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"serve never became ready: {log.read_text()}"
            time.sleep(0.2)
        url = ("--url", f"127.0.0.1:{ports.grpc}")
        args = publish_args("m", "1", weights)
        base = [*CLI, "--repository", repository, "--s3-endpoint", moto.endpoint, *url]
        run_cli([*base, *args], tuple(args), check=True, timeout=240)
        status = run_cli([*base, "status", "m", "--json"], ("status",), check=True, timeout=60)
        document = json.loads(status.stdout)
        assert document["stable"] == "1"
        assert {"version": "1", "state": "READY"} in document["versions"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_init_creates_a_missing_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "not" / "yet" / "model_repository"
    command = [*CLI, "--repository", str(folder), "init"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert folder.is_dir() and not any(folder.iterdir())
    server = EmbeddedTriton(folder, ports=ServerPorts.free(), log_path=tmp_path / "triton.log")
    with server:
        assert server.is_ready()


# -- a bucket that is not there: one line, in seconds ---------------------------------------


def assert_one_line_in_seconds(
    done: subprocess.CompletedProcess[str], took: float, code: int, phrase: str
) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert phrase in done.stderr and "Traceback" not in done.stderr
    assert took < 15, f"took {took:.1f}s"


COMMANDS = {
    "init": ("init",),
    "serve": ("serve", "--http-port=1", "--grpc-port=2", "--metrics-port=3"),
    "status": ("status",),
    "publish": ("publish", "m", "1", "--weights"),  # + a real detector's weights
}


def command_line(command: str, weights: Path) -> tuple[str, ...]:
    args = COMMANDS[command]
    return (*args, str(weights)) if command == "publish" else args


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_bucket_is_one_line_in_seconds(
    moto: MotoServer, s3_env: dict[str, str], weights: Path, command: str
) -> None:
    started = time.monotonic()
    done = run(moto, "s3://no-such-bucket/x", *command_line(command, weights), timeout=60)
    took = time.monotonic() - started
    assert_one_line_in_seconds(done, took, 2, "bucket no-such-bucket does not exist")


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("bucket", ["Bad_Bucket", "bad!bucket", "a"])
def test_a_malformed_bucket_name_is_bad_input(
    moto: MotoServer, s3_env: dict[str, str], weights: Path, command: str, bucket: str
) -> None:
    started = time.monotonic()
    done = run(moto, f"s3://{bucket}/x", *command_line(command, weights), timeout=60)
    took = time.monotonic() - started
    assert_one_line_in_seconds(done, took, 2, f"invalid S3 bucket name {bucket!r}")
