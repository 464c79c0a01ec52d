"""What a newcomer met running the README top to bottom (issue 15), against the real
embedded tritonserver: export settings inherited and a first version at its training size,
validate on a version the policy keeps, policy --clear, rollout waiting for traffic, and
serve reconciling while it runs. (Fixes that need no server: tests/unit/test_readme_fixes.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from repo_manager import Router
from repo_manager.modelconfig import ModelConfig, parse_config
from repo_manager.server import ServerPorts
from repo_manager.transport import make_grpc_client
from tests.integration.conftest import CLI, Stack, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def versions_config(stack: Stack, model: str) -> ModelConfig:
    path = stack.repository / f"{model}.versions" / "config.pbtxt"
    return parse_config(path.read_bytes(), source=str(path))


def manifest(stack: Stack, model: str, version: str) -> dict[str, Any]:
    path = stack.repository / f"{model}.versions" / version / "manifest.json"
    return dict(json.loads(path.read_text()))


def loaded(stack: Stack, model: str) -> set[str]:
    """The versions Triton holds READY."""
    doc = json.loads(stack.cli("status", model, "--json").stdout)
    return {v["version"] for v in doc["versions"] if v["state"] == "READY"}


def test_v2_and_v3_published_with_weights_alone_inherit_160_px_and_max_batch_4(
    shared: Stack, weights: Path
) -> None:
    """``weights`` records training at 640: the model's config wins over the checkpoint."""
    shared.publish("inherit", "1", weights)  # --imgsz 160 --max-batch 4
    shared.cli("publish", "inherit", "2", "--weights", str(weights))
    shared.cli("promote", "inherit")
    third = shared.cli("publish", "inherit", "3", "--weights", str(weights), "-v")
    assert "imgsz 160 (inherit's config), max batch 4 (inherit's config)" in third.stderr
    for version in ("1", "2", "3"):
        written = manifest(shared, "inherit", version)
        assert (written["imgsz"], written["max_batch_size"]) == (160, 4), version
    config = versions_config(shared, "inherit")
    assert config.max_batch_size == 4 and list(config.input[0].dims) == [3, 160, 160]
    assert loaded(shared, "inherit") == {"2", "3"}

    # A real mismatch is refused in words, before the export, leaving the repository as is.
    before = snapshot(shared.repository)
    refused = shared.cli(
        "publish",
        "inherit",
        "4",
        "--weights",
        str(weights),
        "--imgsz",
        "640",
        "--replace",
        check=False,
    )
    assert refused.code == 2, refused.stderr
    assert "imgsz 640, the model serves 160" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert snapshot(shared.repository) == before


def test_a_first_publish_of_a_checkpoint_trained_at_160_serves_160_and_detects(
    shared: Stack, trained_detector: Path, golden_set: Path
) -> None:
    shared.cli("publish", "fresh", "1", "--weights", str(trained_detector))
    config = versions_config(shared, "fresh")
    assert config.parameters["imgsz"].string_value == "160"
    assert list(config.input[0].dims) == [3, 160, 160]
    image = cv2.imread(str(sorted(golden_set.glob("*.png"))[0]))
    with Router("fresh", url=shared.url, repository=str(shared.repository)) as router:
        assert len(router.detect(image)) > 0  # at 640 this detector finds nothing


def test_validate_accepts_a_version_the_policy_keeps_and_policy_clear_unloads_it(
    shared: Stack, trained_detector: Path, golden_set: Path
) -> None:
    for version in ("1", "2"):
        shared.cli("publish", "kept", version, "--weights", str(trained_detector))
    shared.cli("promote", "kept")
    shared.cli("policy", "kept", "--specific", "1")
    assert loaded(shared, "kept") == {"1", "2"}
    report = shared.cli("validate", "kept", "1", "--golden", str(golden_set))
    assert "gate max_map50_drop:" in report.stdout  # the name --gate takes
    cleared = shared.cli("policy", "kept", "--clear")
    assert cleared.stdout.strip() == "kept: loaded versions 2"
    assert loaded(shared, "kept") == {"2"}
    refused = shared.cli("validate", "kept", "1", "--golden", str(golden_set), check=False)
    assert refused.code == 2 and "is not loaded" in refused.stderr


def test_rollout_says_the_first_interval_is_a_baseline_and_that_it_waits_for_traffic(
    shared: Stack, weights: Path
) -> None:
    shared.publish("quiet", "1", weights)
    shared.publish("quiet", "2", weights)
    command = [
        *CLI, "--repository", str(shared.repository), "--url", shared.url,
        "rollout", "quiet", "--steps", "50,100", "--interval", "1s",
        "--metrics-url", shared.server.metrics_url,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "waiting for traffic" in line or not line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    text = "".join(lines)
    assert "is the baseline" in text and "analysis: baseline" in text, text + err
    assert "waiting for traffic" in text and "repo-manager traffic" in text, text + err
    assert process.returncode == 1 and "stays in analysis" in err


def test_serve_keeps_reconciling_while_it_runs(tmp_path: Path, weights: Path) -> None:
    """A version Triton lost (here: unloaded behind the manager's back) is loaded again
    by the running ``serve`` within its reconcile interval."""
    repository = tmp_path / "model_repository"
    ports = ServerPorts.free()
    url = f"127.0.0.1:{ports.grpc}"
    log = tmp_path / "serve.err"
    command = [
        *CLI, "--repository", str(repository), "serve", "--reconcile-interval", "1s",
        "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics), "--log-file", str(tmp_path / "triton.log"),
    ]  # fmt: skip
    with open(log, "wb") as err:
        process = subprocess.Popen(command, stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while "tritonserver ready" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        publish = [
            *CLI, "--repository", str(repository), "--url", url, "publish", "m", "1",
            "--weights", str(weights), "--imgsz", "160",
        ]  # fmt: skip
        subprocess.run(publish, check=True, capture_output=True, timeout=300)
        client = make_grpc_client(url)  # with the control key: serve locks model control
        client.unload_model("m.versions")
        deadline = time.monotonic() + 60
        while "m: reconciled (loaded 1 on" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert client.is_model_ready("m.versions", "1")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()
