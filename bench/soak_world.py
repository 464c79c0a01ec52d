"""The soak's world on loopback: one moto S3 repository, a fleet of embedded tritonservers
reading it, and ``repo-manager`` run as real subprocesses (so a fault can SIGKILL one).

Every manager's stdout and stderr is kept (``outputs``) for the no-secret check; a publish
reuses one export (``stage``): the export is torch's work, not the manager's, and the soak
judges the manager.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from repo_manager.server import EmbeddedTriton, ServerPorts, free_port

__all__ = [
    "KEY_ID",
    "MODEL",
    "SECRET",
    "Outcome",
    "Running",
    "World",
    "drain",
    "export_template",
    "wait_done",
]

ROOT = Path(__file__).resolve().parents[1]
MODEL = "yolov8n"
IMGSZ = 160
#: Fake credentials; the secret must never appear in anything a process prints.
KEY_ID = "AKIAREPOMANAGERSOAK1"
SECRET = "s3cr3t-Soak-Never-Print-93b1d2c4"
CLI = [sys.executable, "-m", "repo_manager.cli"]


@dataclass(kw_only=True, frozen=True)
class Outcome:
    """How one manager process ended."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    killed: bool = False
    seconds: float = 0.0

    def one_line_error(self) -> bool:
        """A refusal as the CLI promises it: one line on stderr, never a traceback."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return self.code != 0 and len(lines) == 1 and "Traceback" not in self.stderr


def export_template(weights: Path, cache: Path) -> Path:
    """``repo-manager export`` of ``weights`` as version 1, once per weights file (cached)."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    target = cache / f"{MODEL}-{IMGSZ}-{digest}"
    if (target / MODEL / "1" / "manifest.json").is_file():
        return target / MODEL
    staging = cache / f".{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = [*CLI, "export", str(weights), "-o", str(staging / MODEL), "--version", "1"]
    command += ["--imgsz", str(IMGSZ), "--max-batch", "4", "--format", "python"]
    done = subprocess.run(command, capture_output=True, text=True, env=_cli_env())
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr.strip()}")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)
    return target / MODEL


def _cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    return {**env, **(extra or {})}


@dataclass(kw_only=True, frozen=True)
class Running:
    """A manager process started by ``World.spawn``."""

    process: subprocess.Popen[str]
    args: tuple[str, ...]
    began: float

    @property
    def pid(self) -> int:
        return self.process.pid


class World:
    """Start with ``start()``, end with ``close()``; ``root`` holds logs and staged exports."""

    def __init__(self, root: Path, template: Path, *, servers: int) -> None:
        self.root = root
        self.template = template
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = f"soak-{os.getpid()}"
        self.env = {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(self.env)  # this process: the Router and the checks read S3 too
        triton_repository = f"s3://{self.endpoint}/{self.bucket}/repo"
        self.servers = [
            EmbeddedTriton(
                triton_repository, ports=ServerPorts.free(), log_path=root / f"triton-{i}.log"
            )
            for i in range(servers)
        ]
        #: Every tritonserver PID this soak started (dead ones too): whose stubs to look for.
        self.server_pids: list[int] = []
        self.outputs: list[str] = []
        #: Every manager run, in order (the soak prints each round's).
        self.steps: list[Outcome] = []
        self.s3: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def repository(self) -> str:
        return f"s3://{self.bucket}/repo"

    @property
    def urls(self) -> list[str]:
        return [s.grpc_url for s in self.servers]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        import boto3

        log = open(self.root / "s3.log", "wb")  # noqa: SIM115 (the child keeps it)
        self.s3 = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "soak_s3.py"), str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=_cli_env(),
        )
        self._expect_up()
        client = boto3.client("s3", endpoint_url=self.endpoint)
        client.create_bucket(Bucket=self.bucket)
        # Triton wants the repository prefix to exist before it starts.
        client.put_object(Bucket=self.bucket, Key="repo/.repo-manager.keep", Body=b"")
        for server in self.servers:
            server.start()
            assert server.pid is not None
            self.server_pids.append(server.pid)
        for server in self.servers:
            server.wait_ready(timeout=120)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        if self.s3 is not None and self.s3.poll() is None:
            assert self.s3.stdin is not None
            self.s3.stdin.write("quit\n")
            self.s3.stdin.flush()
            try:
                self.s3.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.s3.kill()
                self.s3.wait(timeout=10)

    def _expect_up(self) -> None:
        assert self.s3 is not None and self.s3.stdout is not None
        line = self.s3.stdout.readline()
        if line.strip() != "up":
            raise RuntimeError(f"the S3 server did not start (see {self.root / 's3.log'})")

    def restart_s3(self, down_seconds: float) -> None:
        """Close the S3 port for ``down_seconds`` and open it again (data kept)."""
        assert self.s3 is not None and self.s3.stdin is not None
        self.s3.stdin.write(f"restart {down_seconds:.2f}\n")
        self.s3.stdin.flush()
        self._expect_up()

    def kill_server(self, index: int) -> None:
        self.servers[index].kill()

    def start_server(self, index: int) -> None:
        old = self.servers[index]
        server = EmbeddedTriton(old.repository, ports=old.ports, log_path=old.log_path)
        server.start()
        assert server.pid is not None
        self.server_pids.append(server.pid)
        self.servers[index] = server
        server.wait_ready(timeout=120)

    # -- the manager ----------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        urls = [part for url in self.urls for part in ("--url", url)]
        base = ["--repository", self.repository, "--s3-endpoint", self.endpoint]
        return [*CLI, *base, *urls, *args]

    def cli(self, *args: str, timeout: float = 300) -> Outcome:
        began = time.monotonic()
        done = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, env=_cli_env()
        )
        return self.record(args, done.returncode, done.stdout, done.stderr, began)

    def spawn(self, *args: str, verbose: bool = False) -> Running:
        """A manager to be watched (with ``verbose``, its progress lines) and maybe killed."""
        process = subprocess.Popen(
            self.command(*args, *(["-v"] if verbose else [])),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_cli_env(),
        )
        return Running(process=process, args=args, began=time.monotonic())

    def record(
        self, args: tuple[str, ...], code: int, stdout: str, stderr: str, began: float
    ) -> Outcome:
        """Keep what a manager printed (the secret check reads it) and how it ended."""
        outcome = Outcome(
            args=args,
            code=code,
            stdout=stdout,
            stderr=stderr,
            killed=code == -9,
            seconds=time.monotonic() - began,
        )
        with self._lock:
            self.outputs += [stdout, stderr]
            self.steps.append(outcome)
            with open(self.root / "managers.txt", "a") as log:
                log.write(f"$ repo-manager {' '.join(args)}\n")
                log.write(f"-> exit {code} in {outcome.seconds:.1f}s\n{stdout}{stderr}\n")
        return outcome

    def stage(self, version: str) -> Path:
        """An ``export`` folder holding ``version``: the template's files, renumbered."""
        folder = self.root / "exports" / f"v{version}" / MODEL
        if folder.exists():
            return folder
        folder.mkdir(parents=True)
        shutil.copy2(self.template / "config.pbtxt", folder / "config.pbtxt")
        shutil.copytree(self.template / "1", folder / version)
        manifest_path = folder / version / "manifest.json"
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        manifest["version"] = version
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return folder

    def unstage(self) -> None:
        """Drop the staged exports (each 12 MB; ``stage`` makes one again on demand)."""
        shutil.rmtree(self.root / "exports", ignore_errors=True)

    def publish_args(self, version: str, weight: int) -> tuple[str, ...]:
        exported = str(self.stage(version))
        return ("publish", MODEL, version, "--exported", exported, "--canary-weight", str(weight))

    def logs(self) -> list[Path]:
        return sorted(self.root.glob("*.log"))


def drain(stream: IO[str] | None, into: list[str]) -> threading.Thread:
    """Read ``stream`` to its end on a thread (so a child never blocks on a full pipe)."""

    def run() -> None:
        if stream is not None:
            into.extend(stream)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_done(world: World, running: Running, seen: list[str] | None = None) -> Outcome:
    """Wait for a spawned manager; ``seen`` holds the stderr lines read so far."""
    rest: list[str] = []
    stdout: list[str] = []
    process = running.process
    readers = [drain(process.stderr, rest), drain(process.stdout, stdout)]
    code = process.wait(timeout=300)
    for reader in readers:
        reader.join(timeout=10)
    stderr = "".join([*(seen or []), *rest])
    return world.record(running.args, code, "".join(stdout), stderr, running.began)
