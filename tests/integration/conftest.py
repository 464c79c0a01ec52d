"""Fixtures for tests against the real embedded tritonserver (no fake Triton here)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
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
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        result = CliResult(code=done.returncode, stdout=done.stdout, stderr=done.stderr)
        if check and result.code != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.code}): {result.stderr}")
        return result

    def publish(
        self, model: str, version: str, weights: Path, *extra: str, check: bool = True
    ) -> CliResult:
        return self.cli(
            "publish",
            model,
            version,
            "--weights",
            str(weights),
            "--imgsz",
            IMGSZ,
            "--max-batch",
            "4",
            *extra,
            check=check,
        )

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


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    repository = tmp_path / "model_repository"
    repository.mkdir()
    server = EmbeddedTriton(
        repository, ports=ServerPorts.free(), log_path=tmp_path / "tritonserver.log"
    )
    server.start()
    server.wait_ready()
    running = Stack(repository=repository, server=server)
    try:
        yield running
    finally:
        running.server.stop()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (for byte-identical checks)."""
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files
