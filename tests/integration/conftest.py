"""Fixtures for tests against the real embedded tritonserver (no fake Triton here)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from repo_manager.server import EmbeddedTriton, ServerPorts

IMGSZ = "160"
DEFAULT_DETECTOR = Path(__file__).resolve().parents[2] / ".cache" / "detector" / "detector.pt"
CLI = [sys.executable, "-m", "repo_manager.cli"]


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) YOLOv8n detector .pt, built offline from yolov8n.yaml."""
    from export.tiny_detector import make_untrained_detector

    path = tmp_path_factory.mktemp("weights") / "yolov8n-untrained.pt"
    make_untrained_detector(path)
    return path


@pytest.fixture(scope="session")
def trained_detector() -> Path:
    """The tiny detector `make detector` builds (trained here when it is missing)."""
    path = Path(os.environ.get("REPO_MANAGER_DETECTOR", DEFAULT_DETECTOR))
    if not path.is_file():
        from export.tiny_detector import main as train

        assert train(["--out", str(path.parent)]) == 0
    return path


@pytest.fixture(scope="session")
def golden_set(trained_detector: Path) -> Path:
    """The detector's labelled validation split (YOLO layout: images/val, labels/val)."""
    golden = trained_detector.parent / "dataset" / "images" / "val"
    assert golden.is_dir(), f"no dataset beside {trained_detector}"
    return golden


@dataclass(kw_only=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(command: list[str], args: tuple[str, ...], *, check: bool, timeout: float) -> CliResult:
    """Run a CLI command line; with ``check``, a non-zero exit fails naming ``args``."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    result = CliResult(code=done.returncode, stdout=done.stdout, stderr=done.stderr)
    if check and result.code != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.code}): {result.stderr}")
    return result


@dataclass(kw_only=True)
class Stack:
    """One repository, one embedded tritonserver on free ports, and the CLI against them."""

    repository: Path
    server: EmbeddedTriton

    @property
    def url(self) -> str:
        return self.server.grpc_url

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> CliResult:
        command = [*CLI, "--repository", str(self.repository), "--url", self.url, *args]
        return run_cli(command, args, check=check, timeout=timeout)

    def publish(
        self, model: str, version: str, weights: Path, *extra: str, check: bool = True
    ) -> CliResult:
        return self.cli(*publish_args(model, version, weights), *extra, check=check)

    def restart(self, *, kill: bool = True) -> None:
        """Crash (SIGKILL) or stop the server and start a new one on the same ports."""
        if kill:
            self.server.kill()
        else:
            self.server.stop()
        self.server = EmbeddedTriton(
            self.repository, ports=self.server.ports, log_path=self.server.log_path
        )
        self.server.start()
        self.server.wait_ready()


@contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    """A fresh repository under ``root`` and a tritonserver on it, stopped afterwards."""
    repository = root / "model_repository"
    repository.mkdir()
    server = EmbeddedTriton(
        repository, ports=ServerPorts.free(), log_path=root / "tritonserver.log"
    )
    server.start()
    server.wait_ready()
    running = Stack(repository=repository, server=server)
    try:
        yield running
    finally:
        running.server.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One server for a module's tests that each publish models of their own."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with running_stack(tmp_path_factory.mktemp(name)) as running:
        yield running


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Debian's prometheus (`.ci/run` installs it); its tests skip with the reason without."""
    import shutil

    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "no prometheus binary on PATH (Debian/Ubuntu: sudo apt-get install prometheus; "
            "elsewhere: a prometheus release from prometheus.io/download on PATH)"
        )
    return found


#: Niceness of the processes whose latencies a live analysis compares, while it runs.
JUDGED_NICENESS = -5


@contextmanager
def judged_ahead_of_other_tests(*pids: int | None) -> Iterator[None]:
    """Schedule ``pids`` (and the children they start from now on) ahead of the processes of
    the tests running beside this one.

    A live latency gate compares canary and stable over a few seconds; five other test
    processes on two cores made a good canary 2x slower than its stable (39 vs 19 ms) for two
    intervals in a row, and it was rolled back. Raised in priority, the test's own server,
    stubs, Router threads and CLI see about the machine the gate was designed for, and its
    bounds stay as they are. Where raising a priority is not permitted (not root), the test
    runs as before.
    """
    # Linux keeps a niceness per thread, and a new thread or process inherits its creator's:
    # every thread of each process is raised (tritonserver forks stubs from a pool thread).
    threads = [int(t) for pid in pids if pid for t in os.listdir(f"/proc/{pid}/task")]
    changed: list[tuple[int, int]] = []
    try:
        for tid in threads:
            with suppress(ProcessLookupError, PermissionError):
                before = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, JUDGED_NICENESS)
                changed.append((tid, before))
        yield
    finally:
        for tid, before in changed:
            with suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, before)


@pytest.fixture
def live_gate_priority() -> Iterator[None]:
    """For a test whose commands run a live analysis (the README's ``publish --auto``): it
    and every process it starts from now on run ahead of the other tests' processes."""
    with judged_ahead_of_other_tests(os.getpid()):
        yield


@pytest.fixture
def router_metrics(request: pytest.FixtureRequest) -> Iterator[str]:
    """This process's Router metrics on a loopback port (what the analysis reads); the test's
    processes run ahead of the other tests' while it lasts (``judged_ahead_of_other_tests``)."""
    server = request.getfixturevalue("stack").server if "stack" in request.fixturenames else None
    with (
        judged_ahead_of_other_tests(os.getpid(), server.pid if server else None),
        serving_router_metrics() as url,
    ):
        yield url


@contextmanager
def serving_router_metrics() -> Iterator[str]:
    """This process's metrics (its Routers') at a loopback URL while the block runs."""
    from repo_manager.metrics import start_metrics_server
    from repo_manager.server import free_port

    port = free_port()
    server = start_metrics_server(port, addr="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (for byte-identical checks)."""
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


# ---- S3: a real S3-compatible server (moto's standalone server) -------------------------

#: Fake credentials; the secret is asserted absent from every output and log.
S3_KEY_ID = "AKIAREPOMANAGERTEST1"
S3_SECRET = "s3cr3t-Do-Not-Print-4f1c9e0b7a"
S3_REGION = "us-east-1"


def _wait_for_http(url: str, deadline: float) -> None:
    import time
    import urllib.error
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(url, timeout=1.0).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass(kw_only=True)
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_moto(log: Path, **env: str) -> MotoServer:
    import time

    from repo_manager.server import free_port

    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    server = MotoServer(endpoint=f"http://127.0.0.1:{port}", process=process)
    try:
        _wait_for_http(server.endpoint, time.monotonic() + 30)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session (each test uses its own bucket)."""
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables, for this process, the CLI and tritonservers alike."""
    env = {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
    }
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(moto: MotoServer, s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    """A fresh bucket named for the test, with the repository prefix ``repo`` in it."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    from repo_manager.storage.s3 import S3Storage

    boto3.client("s3", endpoint_url=moto.endpoint).create_bucket(Bucket=name)
    # What `repo-manager init` does: Triton refuses a prefix no object lies under yet.
    S3Storage(f"s3://{name}/repo", endpoint_url=moto.endpoint).prepare()
    return name


@dataclass(kw_only=True)
class S3Fleet:
    """Several embedded tritonservers reading one S3 repository, and the CLI against them."""

    endpoint: str
    bucket: str
    servers: list[EmbeddedTriton]
    logs: Path

    @property
    def repository(self) -> str:
        return f"s3://{self.bucket}/repo"

    @property
    def triton_repository(self) -> str:
        return f"s3://{self.endpoint}/{self.bucket}/repo"

    @property
    def urls(self) -> list[str]:
        return [s.grpc_url for s in self.servers]

    def command(self, *args: str) -> list[str]:
        urls = [part for url in self.urls for part in ("--url", url)]
        return [
            *CLI,
            "--repository",
            self.repository,
            "--s3-endpoint",
            self.endpoint,
            *urls,
            *args,
        ]

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> CliResult:
        return run_cli(self.command(*args), args, check=check, timeout=timeout)

    def publish(self, model: str, version: str, weights: Path, *extra: str) -> CliResult:
        return self.cli(*publish_args(model, version, weights), *extra)

    def start(self, index: int) -> None:
        old = self.servers[index]
        self.servers[index] = EmbeddedTriton(
            self.triton_repository, ports=old.ports, log_path=old.log_path
        )
        self.servers[index].start()
        self.servers[index].wait_ready(timeout=120)


def publish_args(model: str, version: str, weights: Path) -> list[str]:
    return [
        "publish",
        model,
        version,
        "--weights",
        str(weights),
        "--imgsz",
        IMGSZ,
        "--max-batch",
        "4",
    ]


def make_fleet(endpoint: str, bucket: str, logs: Path, size: int) -> S3Fleet:
    repository = f"s3://{endpoint}/{bucket}/repo"
    servers = [
        EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=logs / f"triton-{i}.log")
        for i in range(size)
    ]
    fleet = S3Fleet(endpoint=endpoint, bucket=bucket, servers=servers, logs=logs)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout=120)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return fleet


@contextmanager
def running_fleet(moto: MotoServer, bucket: str, tmp_path: Path, count: int) -> Iterator[S3Fleet]:
    """``count`` tritonservers reading one S3 repository, stopped afterwards."""
    running = make_fleet(moto.endpoint, bucket, tmp_path, count)
    try:
        yield running
    finally:
        for server in running.servers:
            server.stop()


@pytest.fixture
def fleet3(moto: MotoServer, bucket: str, tmp_path: Path) -> Iterator[S3Fleet]:
    """Three tritonservers reading the same S3 repository."""
    with running_fleet(moto, bucket, tmp_path, 3) as running:
        yield running


@pytest.fixture
def fleet1(moto: MotoServer, bucket: str, tmp_path: Path) -> Iterator[S3Fleet]:
    """One tritonserver reading an S3 repository."""
    with running_fleet(moto, bucket, tmp_path, 1) as running:
        yield running
