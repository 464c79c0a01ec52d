"""A publish that cannot load, one that loads too slowly, and one that is interrupted, on
the real embedded tritonserver: each ends in one line and a consistent repository."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from repo_manager.errors import VersionNotReadyError
from repo_manager.modelconfig import parse_config, render_config
from repo_manager.names import versions_model_name
from repo_manager.repository import ModelRepository
from repo_manager.rollout import RolloutManager, RolloutSettings
from repo_manager.state import load_state
from repo_manager.storage import LocalStorage
from repo_manager.triton import TritonFleet
from tests.eventually import eventually
from tests.integration.conftest import CLI, Stack, publish_args, snapshot
from tests.integration.manifests import reseal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "yolov8n"
VERSIONS = versions_model_name(MODEL)
JOURNAL = f".repo-manager.{MODEL}.publishing.json"


def triton_states(stack: Stack) -> dict[str, str]:
    with grpcclient.InferenceServerClient(stack.url) as triton:
        index = triton.get_model_repository_index(as_json=True)
    return {
        str(m["version"]): str(m.get("state", ""))
        for m in index.get("models", [])
        if m.get("name") == VERSIONS and m.get("version")
    }


def ready(stack: Stack) -> set[str]:
    return {v for v, s in triton_states(stack).items() if s == "READY"}


def slow_down(model_py: Path, seconds: float) -> None:
    """Make a version's initialize (so its load) take ``seconds`` longer."""
    model_py.write_text(
        model_py.read_text()
        + "\n\n_initialize = TritonPythonModel.initialize\n\n"
        + "def _slow_initialize(self, args):\n"
        + f"    import time\n    time.sleep({seconds})\n    return _initialize(self, args)\n\n"
        + "TritonPythonModel.initialize = _slow_initialize\n"
    )


def slow_export(stack: Stack, root: Path, seconds: float) -> Path:
    """An export of version 2 under ``root``: version 1's files, with a load that takes
    ``seconds`` longer (exported with that code: its manifest says so)."""
    staged = root / "staged" / MODEL
    staged.mkdir(parents=True)
    shutil.copytree(stack.repository / VERSIONS / "1", staged / "2")
    slow_down(staged / "2" / "model.py", seconds)
    reseal(staged / "2", version="2")
    on_disk = stack.repository / VERSIONS / "config.pbtxt"
    config = parse_config(on_disk.read_bytes(), source=str(on_disk))
    config.name = MODEL
    (staged / "config.pbtxt").write_bytes(render_config(config))
    return staged


def staging_folders(pid: int) -> list[Path]:
    return sorted(Path("/tmp").glob(f"repo-manager-stage-{pid}-*"))


def test_a_version_of_another_backend_is_refused_before_anything_is_written(
    stack: Stack, weights: Path
) -> None:
    stack.publish(MODEL, "1", weights)
    before = snapshot(stack.repository)
    started = time.monotonic()
    # The model is served by the python backend; an onnxruntime version would be loaded
    # by it, find no model.py, and hang its load for good.
    refused = stack.cli(
        *publish_args(MODEL, "2", weights), "--format", "onnx", check=False, timeout=120
    )
    assert refused.code == 2, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    # Refused before the export, in words (export.settings: one config serves every version).
    assert "format onnx, the model serves python" in refused.stderr
    assert time.monotonic() - started < 60
    assert snapshot(stack.repository) == before
    assert triton_states(stack) == {"1": "READY"}


def test_a_load_past_its_deadline_is_one_line_naming_the_version_and_is_undone(
    stack: Stack, weights: Path, tmp_path: Path
) -> None:
    stack.publish(MODEL, "1", weights)
    staged = slow_export(stack, tmp_path, 25)
    storage = LocalStorage(stack.repository)
    before = load_state(storage, MODEL)
    manager = RolloutManager(
        ModelRepository(storage),
        TritonFleet([stack.url]),
        settings=RolloutSettings(ready_timeout=4.0),
    )
    started = time.monotonic()
    with pytest.raises(VersionNotReadyError) as refused:
        manager.publish(MODEL, "2", staged=staged)
    took = time.monotonic() - started
    message = str(refused.value)
    assert "\n" not in message
    assert "load not done within 4s" in message and "version 2 LOADING" in message, message
    # Triton still loads it: its files stay (a load must not lose them), the journal too.
    assert "publish not undone yet" in message and "run reconcile" in message, message
    assert took < 20, f"took {took:.1f}s"
    assert load_state(storage, MODEL) == before
    assert manager.ledger.pending_publish(MODEL) is not None
    # Once Triton finished the slow load, reconcile unloads the version and removes it.
    deadline = time.monotonic() + 90
    while triton_states(stack).get("2") == "LOADING":
        assert time.monotonic() < deadline, triton_states(stack)
        time.sleep(0.5)
    report = json.loads(stack.cli("reconcile", "--json").stdout)
    assert report[0]["actions"][0].startswith("undid the interrupted publish of version 2")
    assert ready(stack) == {"1"}
    assert not (stack.repository / VERSIONS / "2").exists()
    assert manager.ledger.pending_publish(MODEL) is None
    assert load_state(storage, MODEL) == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_reconcile_watch_stops_on_a_signal_while_a_load_is_slow(
    stack: Stack, weights: Path, tmp_path: Path, signum: int
) -> None:
    stack.publish(MODEL, "1", weights)
    slow_down(stack.repository / VERSIONS / "1" / "model.py", 90)
    reseal(stack.repository / VERSIONS / "1")  # as if published with that code
    stack.restart(kill=True)  # comes back with nothing loaded: reconcile loads the slow 1
    command = [*CLI, "--repository", str(stack.repository), "--url", stack.url]
    with (tmp_path / "watch.log").open("wb") as log:
        watch = subprocess.Popen(
            [*command, "reconcile", "--watch", "--interval", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while triton_states(stack).get("1") != "LOADING":
            assert watch.poll() is None and time.monotonic() < deadline, triton_states(stack)
            time.sleep(0.2)
        time.sleep(1.0)
        watch.send_signal(signum)
        stopped = time.monotonic()
        watch.wait(timeout=10)
        assert time.monotonic() - stopped < 10
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_publish_interrupted_during_its_load_is_undone_and_can_be_repeated(
    stack: Stack, weights: Path, tmp_path: Path, signum: int
) -> None:
    stack.publish(MODEL, "1", weights)
    # A load 8 s longer than usual: the signal 0.5 s after the line lands inside it even
    # when this process reads the line late (under parallel load a normal load of about
    # 1.7 s once ended, and the publish with it, before the signal: exit 0; with 3 s more,
    # once again at load average 19, in a fresh-clone run of the whole suite).
    exported = slow_export(stack, tmp_path, 8)
    command = [*CLI, "--repository", str(stack.repository), "--url", stack.url]
    process = subprocess.Popen(
        [*command, "publish", MODEL, "2", "--exported", str(exported), "-v"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    states: dict[str, str] = {}
    for line in process.stderr:
        seen.append(line)
        if line.startswith(f"loading {MODEL} versions 1,2"):
            # Signalled once Triton itself says version 2 is loading, not after a fixed
            # pause: twice in fresh-clone runs of the whole suite (load average 17-19) the
            # publish ended with exit 0 after a signal sent 0.5 s after this line.
            deadline = time.monotonic() + 30
            while (states := triton_states(stack)).get("2") != "LOADING":
                if states.get("2") == "READY" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            process.send_signal(signum)
            break
    _out, rest = process.communicate(timeout=120)
    seen.append(rest)
    said = "".join(seen)
    assert states.get("2") == "LOADING", f"version 2 was {states} when signalled:\n{said}"
    assert process.returncode != 0, said
    if signum != signal.SIGKILL:
        # It undid itself: one line, no version, no staging folder, Triton as before. (Once,
        # in a fresh-clone run, the version stayed while the line said nothing was kept; the
        # line now says how the undo went, and ``said`` holds the undo's progress.)
        last = rest.strip().splitlines()[-1]
        assert last.startswith("error: publish yolov8n 2 interrupted; publish undone: "), said
        assert not (stack.repository / VERSIONS / "2").exists(), said
        assert staging_folders(process.pid) == [], said
    else:
        # Killed: its version and journal are left until reconcile settles them (once
        # Triton finished the load the killed manager started).
        assert (stack.repository / VERSIONS / "2").exists()
        assert json.loads((stack.repository / JOURNAL).read_text())["pending"]
        assert eventually(lambda: triton_states(stack).get("2") != "LOADING", 60)
        report = json.loads(stack.cli("reconcile", "--json").stdout)
        assert report[0]["actions"][0].startswith("undid the interrupted publish of version 2")
        assert not (stack.repository / VERSIONS / "2").exists()
        assert ready(stack) == {"1"}
    state = load_state(LocalStorage(stack.repository), MODEL)
    assert state is not None and state.stable == "1" and state.canary is None

    stack.publish(MODEL, "2", weights)  # the retry succeeds
    assert ready(stack) == {"1", "2"}
    state = load_state(LocalStorage(stack.repository), MODEL)
    assert state is not None and state.canary == "2"
    assert staging_folders(process.pid) == []  # a killed run's folder is swept
    assert sorted(os.listdir(stack.repository / VERSIONS)) == ["1", "2", "config.pbtxt"]
