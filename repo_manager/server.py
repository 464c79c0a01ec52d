"""The embedded tritonserver: the binary that ships inside the nvidia-pytriton wheel.

A small process wrapper (start, wait until ready with a deadline, is_alive, stop with
SIGINT then kill) used by ``repo-manager serve`` and by the integration tests. The child
gets ``PR_SET_PDEATHSIG`` (through ``setpriv``) so it dies with its parent, the python
backend gets a private backends folder holding the stub that matches this interpreter,
and the stub runs with this environment's ``bin`` first on PATH (else its models fail
with "No module named 'numpy'").
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repo_manager.errors import RepoManagerError, TritonUnavailableError
from repo_manager.shm_owners import backend_region_prefix, reclaim_dead_regions, unlink_regions
from repo_manager.transport import restricted_flags

__all__ = [
    "EmbeddedTriton",
    "ServerPorts",
    "connect_address",
    "find_tritonserver",
    "free_port",
    "free_ports",
]

_PR_SET_PDEATHSIG = 1


class ServerNotInstalledError(RepoManagerError):
    """The embedded server needs the `server` extra (nvidia-pytriton)."""


@dataclass(kw_only=True, frozen=True)
class ServerPorts:
    """Ports of one tritonserver; 8000/8001/8002 are Triton's own defaults."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> ServerPorts:
        http, grpc, metrics = free_ports(3)
        return cls(http=http, grpc=grpc, metrics=metrics)


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on loopback nobody listens on right now: each held
    until all are chosen (two ports picked one after the other were once the same, and
    tritonserver refused to start: "cannot listen to HTTP requests and GRPC requests at
    the same address and port")."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


#: Wildcard binds (every address) and the loopback address that reaches them.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def connect_address(host: str, port: int) -> str:
    """``HOST:PORT`` that reaches a server bound to ``host``: a wildcard bind (0.0.0.0,
    ::) through loopback, a concrete address (or name) at itself; IPv6 in brackets."""
    target = _WILDCARDS.get(host, host)
    return f"[{target}]:{port}" if ":" in target else f"{target}:{port}"


@dataclass(kw_only=True, frozen=True)
class TritonInstallation:
    binary: Path
    libs: Path
    backends: Path
    stub: Path


def find_tritonserver() -> TritonInstallation:
    """Locate the tritonserver binary, its libraries and the matching python stub."""
    try:
        import pytriton
    except ImportError as exc:
        raise ServerNotInstalledError(
            "the embedded Triton needs the server extra: pip install 'repo-manager[server]'"
        ) from exc
    package = Path(pytriton.__file__).parent
    triton = package / "tritonserver"
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstallation(
        binary=triton / "bin" / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        backends=triton / "backends",
        stub=triton / "python_backend_stubs" / tag / "triton_python_backend_stub",
    )
    for path in (install.binary, install.libs, install.backends, install.stub):
        if not path.exists():
            raise ServerNotInstalledError(f"incomplete nvidia-pytriton install: {path} is missing")
    return install


def _private_backends(install: TritonInstallation) -> Path:
    """A backends folder whose python backend carries this interpreter's stub.

    Kept per user in the temp dir and keyed by the install, so it is built once.
    """
    key = hashlib.sha256(f"{install.backends}:{install.stub}".encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"repo-manager-backends-{os.getuid()}-{key}"
    if (target / "python" / "triton_python_backend_stub").exists():
        return target
    staged = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    shutil.copytree(install.backends, staged, dirs_exist_ok=True)
    shutil.copy2(install.stub, staged / "python" / "triton_python_backend_stub")
    try:
        os.rename(staged, target)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(staged, ignore_errors=True)
    return target


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn_dying_with_parent(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` so that it gets SIGKILL when this process dies.

    util-linux's ``setpriv --pdeathsig`` sets the signal and execs the command, so no
    Python runs between fork and exec. A ``preexec_fn`` does run Python there, and in a
    process whose gRPC threads are busy the forked child was seen to segfault (exit -11)
    before reaching exec; it stays only as the fallback where ``setpriv`` is missing.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return subprocess.Popen([setpriv, "--pdeathsig", "KILL", "--", *command], **popen)
    return subprocess.Popen(command, preexec_fn=_die_with_parent, **popen)


class EmbeddedTriton:
    """One tritonserver process in explicit model-control mode over a repository."""

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        ports: ServerPorts | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        control_key: str | None = None,
    ) -> None:
        """``control_key``: serve model control, shared memory, trace and log settings only
        to callers that send it (``transport.restricted_flags``); None: open to all."""
        location = str(repository)
        # Triton resolves a relative path against its own cwd: hand it an absolute one.
        self.repository = location if "://" in location else str(Path(location).resolve())
        self.host = host
        self.ports = ports or ServerPorts()
        self.log_path = log_path
        self.extra_args = extra_args
        self.control_key = control_key
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: int | None = None
        # The python backend's regions of the running process: unlinked once it has exited,
        # since a killed tritonserver leaves them in /dev/shm (seen in bench/soak.py).
        self._region_prefix: str | None = None

    # Reported, waited on and reconciled through: where the server listens (``host``).
    @property
    def grpc_url(self) -> str:
        return connect_address(self.host, self.ports.grpc)

    @property
    def http_url(self) -> str:
        return connect_address(self.host, self.ports.http)

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_address(self.host, self.ports.metrics)}/metrics"

    def command(self, install: TritonInstallation, backends: Path) -> list[str]:
        return [
            str(install.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            "--log-verbose=0",
            *(
                [f"--backend-config=python,shm-region-prefix-name={self._region_prefix}"]
                if self._region_prefix
                else []
            ),
            *(restricted_flags(self.control_key) if self.control_key else []),
            *self.extra_args,
        ]

    def environment(self, install: TritonInstallation) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(install.libs)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libs, env.get("LD_LIBRARY_PATH")) if p)
        interpreter_bin = str(Path(sys.executable).parent)
        env["PATH"] = ":".join(p for p in (interpreter_bin, env.get("PATH")) if p)
        return env

    def start(self) -> None:
        """Start the process (once); use ``wait_ready`` before sending requests."""
        if self.is_alive():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        install = find_tritonserver()
        backends = _private_backends(install)
        self._release_regions()  # of an earlier run of this server that died on its own
        reclaim_dead_regions()  # of servers whose launcher was killed with them
        self._region_prefix = backend_region_prefix()
        output: int | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._log_handle = output
        self._process = _spawn_dying_with_parent(
            self.command(install, backends),
            env=self.environment(install),
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            stdin=subprocess.DEVNULL,
            # Its own process group: a kill reaches the python backend stubs too, which
            # Triton 2.51 leaves running (polling) when it dies without a shutdown.
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server answers ready; raise if it dies or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_alive():
                code = self._process.returncode if self._process else None
                raise TritonUnavailableError(
                    f"tritonserver exited with code {code} while starting{self._log_hint()}"
                )
            if self.is_ready():
                return
            time.sleep(0.1)
        raise TritonUnavailableError(
            f"tritonserver not ready after {timeout:.0f}s{self._log_hint()}"
        )

    def _log_hint(self) -> str:
        return f" (log: {self.log_path})" if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (Triton drains and unloads), then SIGKILL after ``timeout``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._release_regions()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for restart tests), with its backend stubs."""
        if self._process is not None and self._process.poll() is None:
            self._kill_group(self._process)
        self._release_regions()
        self._close_log()

    def _release_regions(self) -> None:
        """Unlink the exited process's python-backend regions (and its stubs': the group
        was killed or shut down with it)."""
        if self._region_prefix is not None and not self.is_alive():
            unlink_regions(self._region_prefix)
            self._region_prefix = None

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def _close_log(self) -> None:
        if self._log_handle is not None:
            os.close(self._log_handle)
            self._log_handle = None

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
