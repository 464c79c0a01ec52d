"""The README, run as a newcomer runs it: every command and example, top to bottom, against
the embedded tritonserver the README's own ``repo-manager serve &`` starts.

Its fenced ``sh``/``bash`` blocks are run command by command (``&``: in the background)
and its ``python`` blocks as scripts, in the README's order, in a fresh folder holding
``v1.pt`` ... ``v6.pt`` (the tiny detector) and ``golden/`` (its labelled validation
images). What cannot run on a machine without a GPU, Docker or a cluster is listed in
``EXCEPTED`` with the reason; a README command that is neither run nor excepted cannot
exist (each is run), and an exception that no longer matches a README command fails the
test, so the list stays in sync with the README. Only the ports differ: ``serve`` gets
free ones instead of 8000-8002, and ``TRITON_URL``/``TRITON_METRICS_URL`` name them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from repo_manager.errors import TritonUnavailableError
from repo_manager.server import ServerPorts
from repo_manager.triton import TritonControl
from tests.integration.conftest import CLI

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

README = Path(__file__).resolve().parents[2] / "README.md"

#: README commands not run here (a substring of the command -> why).
EXCEPTED = {
    "make demo": "its own entry point, run by `make demo`",
    "make test": "runs this test",
    "make check": "lint and the unit tests, which `make test` runs too",
    "--format plan": "builds a TensorRT plan: needs an NVIDIA GPU with TensorRT",
    "--exported out/yolov8s": "publishes the GPU plans exported just before it",
    "docker compose": "the GPU stack: needs Docker with the NVIDIA Container Toolkit",
    "cp v1.pt v2.pt weights/": "prepares the Docker stack's weights folder",
    "kubectl": "needs a Kubernetes cluster",
}


@dataclass(kw_only=True, frozen=True)
class Snippet:
    """One thing the README asks to run: a shell command or a Python example."""

    kind: str  # "sh" or "python"
    text: str
    line: int  # where it starts in the README, for messages

    def tokens(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def background(self) -> bool:
        return self.kind == "sh" and self.tokens()[-1:] == ["&"]

    def argv(self) -> list[str]:
        tokens = self.tokens()
        return tokens[:-1] if tokens[-1:] == ["&"] else tokens


def readme_snippets(text: str) -> list[Snippet]:
    """Every shell command (comments dropped, ``\\`` lines joined) and Python block."""
    snippets: list[Snippet] = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        language, body = match.group(1), match.group(2)
        start = text.count("\n", 0, match.start()) + 2
        if language == "python":
            snippets.append(Snippet(kind="python", text=body, line=start))
        elif language in ("sh", "bash"):
            pending, first = "", start
            for offset, line in enumerate(body.splitlines()):
                if not pending:
                    first = start + offset
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                    continue
                command = (pending + line).strip()
                pending = ""
                if command and not command.startswith("#"):
                    snippets.append(Snippet(kind="sh", text=command, line=first))
    return snippets


def excepted(snippet: Snippet) -> str | None:
    return next((why for part, why in EXCEPTED.items() if part in snippet.text), None)


def test_the_readme_parses_into_commands_and_every_exception_still_matches() -> None:
    snippets = readme_snippets(README.read_text())
    assert sum(s.kind == "python" for s in snippets) >= 2
    commands = [s.tokens() for s in snippets if s.kind == "sh"]
    assert ["repo-manager", "init"] in commands and ["repo-manager", "serve", "&"] in commands
    for part in EXCEPTED:  # an exception the README no longer needs must go
        assert any(part in s.text for s in snippets), f"EXCEPTED {part!r} matches nothing"
    for snippet in snippets:
        if snippet.kind == "sh" and excepted(snippet) is None:
            program = snippet.argv()[0]
            assert program == "repo-manager", f"README line {snippet.line}: {snippet.text}"


def workdir_for(root: Path, detector: Path, golden_set: Path) -> Path:
    """The folder a newcomer runs the README in: weights and a labelled golden set."""
    work = root / "readme"
    work.mkdir()
    for n in range(1, 7):
        shutil.copy(detector, work / f"v{n}.pt")
    golden = work / "golden"
    golden.mkdir()
    labels = golden_set.parent.parent.parent / "labels" / golden_set.name
    for image in sorted(golden_set.glob("*.png")):
        shutil.copy(image, golden / image.name)
        label = labels / f"{image.stem}.txt"
        if label.is_file():
            shutil.copy(label, golden / label.name)
    return work


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            TritonControl(url, request_timeout=2).check_reachable()
            return
        except TritonUnavailableError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not come up: {log.read_text()}") from None
            time.sleep(0.3)


# Its `publish --auto` judges live latencies: a canary 2x slower than stable for two
# intervals (14.1 vs 7.1 ms) was rolled back once when the tests beside it loaded the machine.
@pytest.mark.usefixtures("live_gate_priority")
def test_every_readme_command_and_example_runs_in_order(
    tmp_path: Path, trained_detector: Path, golden_set: Path
) -> None:
    work = workdir_for(tmp_path, trained_detector, golden_set)
    ports = ServerPorts.free()
    env = {
        **os.environ,
        "TRITON_URL": f"127.0.0.1:{ports.grpc}",
        "TRITON_METRICS_URL": f"127.0.0.1:{ports.metrics}",
        "YOLO_OFFLINE": "1",
        "PYTHONPATH": str(README.parent),
    }
    env.pop("REPO_MANAGER_REPOSITORY", None)  # the README's default: ./model_repository
    background: list[tuple[Snippet, subprocess.Popen[bytes], Path]] = []
    ran: list[str] = []
    try:
        for snippet in readme_snippets(README.read_text()):
            if excepted(snippet) is not None:
                continue
            log = tmp_path / f"line-{snippet.line}.log"
            if snippet.kind == "python":
                command = [sys.executable, "-c", snippet.text]
            else:
                command = [*CLI, *snippet.argv()[1:]]
                if command[len(CLI)] == "serve":
                    command += ["--http-port", str(ports.http), "--grpc-port", str(ports.grpc)]
                    command += ["--metrics-port", str(ports.metrics)]
            if snippet.background:
                with open(log, "wb") as output:
                    process = subprocess.Popen(
                        command, cwd=work, env=env, stdout=output, stderr=subprocess.STDOUT
                    )
                background.append((snippet, process, log))
                if command[len(CLI)] == "serve":
                    wait_until_serving(env["TRITON_URL"], process, log)
            else:
                done = subprocess.run(
                    command, cwd=work, env=env, capture_output=True, text=True, timeout=420
                )
                assert done.returncode == 0, (
                    f"README line {snippet.line} exited {done.returncode}: {snippet.text}\n"
                    f"{done.stdout}{done.stderr}"
                )
            ran.append(snippet.text)
        for snippet, process, log in background:
            assert process.poll() in (None, 0), f"README line {snippet.line}: {log.read_text()}"
    finally:
        for _, process, _ in reversed(background):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
    assert any("rollout yolov8s" in text for text in ran)
    assert any("from repo_manager import Router" in text for text in ran)
