"""Bad input: one clear line, the right exit code, and the repository byte-identical."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from repo_manager.server import free_port
from tests.checkpoints import NOT_SERVED, untrained_checkpoint
from tests.integration.conftest import Stack, running_stack, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "yolov8n"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[Stack]:
    """A repository with stable version 1 (no canary), shared by the module.

    Sharing is safe because every test here asserts the repository is left byte-identical.
    """
    with running_stack(tmp_path_factory.mktemp("bad-input")) as stack:
        stack.publish(MODEL, "1", weights)
        yield stack


def _bad_weights(tmp: Path, weights: Path) -> dict[str, Path]:
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    not_yolo = tmp / "not_yolo.pt"
    import torch

    torch.save({"weights": torch.zeros(3)}, not_yolo)
    return {"truncated": truncated, "not_yolo": not_yolo}


def assert_refused(stack: Stack, args: list[str], code: int, match: str) -> None:
    before = snapshot(stack.repository)
    result = stack.cli(*args, check=False)
    assert result.code == code, (args, result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert match.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.stderr
    assert snapshot(stack.repository) == before


def test_bad_weights_are_refused(published: Stack, weights: Path, tmp_path: Path) -> None:
    bad = _bad_weights(tmp_path, weights)
    base = ["publish", MODEL, "2", "--imgsz", "160", "--weights"]
    assert_refused(published, [*base, str(tmp_path / "missing.pt")], 2, "not found")
    assert_refused(published, [*base, str(bad["truncated"])], 2, "truncated.pt")
    assert_refused(published, [*base, str(bad["not_yolo"])], 2, "not_yolo.pt")


def test_publish_without_weights_offline_says_to_pass_weights(
    published: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(published, ["publish", "yolov8s", "1"], 2, "--weights")


@pytest.mark.parametrize("name", ["a/b", "..", "../evil", "has space", ""])
def test_unsafe_model_names_are_refused(published: Stack, weights: Path, name: str) -> None:
    assert_refused(published, ["publish", name, "1", "--weights", str(weights)], 2, "model name")


@pytest.mark.parametrize("version", ["0", "-1", "abc"])
def test_bad_versions_are_refused(published: Stack, weights: Path, version: str) -> None:
    args = ["publish", MODEL, version, "--weights", str(weights)]
    assert_refused(published, args, 2, "version")


def test_existing_version_is_refused(published: Stack, weights: Path) -> None:
    args = ["publish", MODEL, "1", "--weights", str(weights)]
    assert_refused(published, args, 2, "already exists")


@pytest.mark.parametrize("weight", ["101", "-1"])
def test_weights_outside_0_100_are_refused(published: Stack, weight: str) -> None:
    assert_refused(published, ["set-weight", MODEL, weight], 2, "weight")


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_promote_and_rollback_need_a_canary(published: Stack, command: str) -> None:
    assert_refused(published, [command, MODEL], 2, "no canary")


def test_unreachable_triton_is_an_operational_failure(published: Stack, weights: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    base = [sys.executable, "-m", "repo_manager.cli", "--repository", str(published.repository)]
    before = snapshot(published.repository)
    publish = [*base, "--url", dead, "publish", MODEL, "2", "--weights", str(weights)]
    done = subprocess.run(publish, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: Triton unreachable at {dead}"]
    assert snapshot(published.repository) == before

    # status still answers from the repository and reports the server as down.
    status = [*base, "--url", dead, "status", MODEL, "--json"]
    done = subprocess.run(status, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unreachable" in json.loads(done.stdout)["servers"][0]["error"]


def test_a_checkpoint_that_is_no_served_detector_is_refused_in_one_line(
    published: Stack, tmp_path: Path
) -> None:
    """A segmentation checkpoint: exit 2, the served generations named, the repository
    byte-identical (every kind of ``NOT_SERVED`` is refused in-process by the unit tests
    of the export: ``test_export.py``)."""
    yaml, words = NOT_SERVED[0]
    weights = untrained_checkpoint(tmp_path / f"{Path(yaml).stem}.pt", yaml)
    args = ["publish", MODEL, "2", "--imgsz", "160", "--weights", str(weights)]
    assert_refused(published, args, 2, f"{words} (served: YOLOv3u, v5u, v6, v8, v9, v10, 11, 12")


def test_a_version_in_another_contract_is_refused_in_one_line(
    published: Stack, weights: Path
) -> None:
    """The model serves end-to-end detections; a raw version would change the public
    name's output shape during the canary."""
    args = ["publish", MODEL, "2", "--weights", str(weights), "--contract", "raw"]
    assert_refused(published, args, 2, "contract raw, the model serves end2end")
