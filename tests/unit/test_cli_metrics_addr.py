"""``rollout`` and ``publish --auto`` take the same ``--metrics-port``/``--metrics-addr``
pair as ``reconcile`` and ``traffic``, and the manager's metrics bind the address given."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from repo_manager.cli import options
from repo_manager.cli.app import cli
from repo_manager.metrics import start_metrics_server
from repo_manager.server import free_port


@pytest.mark.parametrize("command", ["rollout", "publish", "reconcile", "traffic"])
def test_every_command_serving_metrics_takes_metrics_addr(command: str) -> None:
    done = CliRunner().invoke(cli, [command, "--help"])
    assert done.exit_code == 0, done.output
    assert "--metrics-addr" in done.output and "--metrics-port" in done.output


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The metrics servers the command starts (the real ones), shut down afterwards; and
    the signal handlers the command installs, put back."""
    started: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        started.append(start_metrics_server(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(options, "start_metrics_server", start)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield started
    finally:
        for server in started:
            server.shutdown()
            server.server_close()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_rollout_binds_its_metrics_to_metrics_addr(tmp_path: Path, served: list[Any]) -> None:
    port = free_port()
    args = ["--repository", str(tmp_path), "--url", "127.0.0.1:1", "rollout", "m"]
    done = CliRunner().invoke(
        cli, [*args, "--metrics-port", str(port), "--metrics-addr", "127.0.0.2"]
    )
    # Nothing published: the analysis refuses, after the metrics were served.
    assert done.exit_code != 0 and "never published" in str(done.exception), done.output
    assert len(served) == 1
    assert _answers(f"http://127.0.0.2:{port}/metrics")
    assert not _answers(f"http://127.0.0.1:{port}/metrics")  # not loopback's 127.0.0.1
