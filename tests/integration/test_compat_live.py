"""Publishing built artifacts: the plan guard reads the server's release; exports are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from repo_manager.compat import check_plan_compatible
from repo_manager.errors import IncompatibleModelError
from repo_manager.triton import TritonFleet
from tests.integration.conftest import IMGSZ, Stack, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_plan_guard_uses_the_release_the_server_reports(stack: Stack) -> None:
    servers = TritonFleet([stack.url]).server_versions()
    assert servers == {stack.url: "2.51.0"}
    check_plan_compatible({"format": "plan", "tensorrt": "10.5.0.18"}, servers)
    with pytest.raises(IncompatibleModelError, match=r"24\.10"):
        check_plan_compatible({"format": "plan", "tensorrt": "10.8.0.43"}, servers)


def test_an_exported_folder_publishes_as_built_and_a_tampered_copy_is_refused(
    stack: Stack, weights: Path, tmp_path: Path
) -> None:
    exported = tmp_path / "built" / "yolov8n"
    stack.cli("export", str(weights), "-o", str(exported), "--imgsz", IMGSZ, "--max-batch", "4")
    tampered = tmp_path / "tampered" / "yolov8n"
    shutil.copytree(exported, tampered)
    with (tampered / "1" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")

    before = snapshot(stack.repository)
    for model, source, message in [
        ("yolov8n", tampered, "differs from its manifest"),
        ("other", exported, "is an export of 'yolov8n'"),
    ]:
        refused = stack.cli("publish", model, "1", "--exported", str(source), check=False)
        assert refused.code == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], refused.stderr
        assert snapshot(stack.repository) == before

    stack.cli("publish", "yolov8n", "1", "--exported", str(exported))
    status = json.loads(stack.cli("status", "yolov8n", "--json").stdout)
    assert status["stable"] == "1"
    assert {v["version"]: v["state"] for v in status["versions"]} == {"1": "READY"}
    manifest = json.loads((exported / "1" / "manifest.json").read_text())
    published = snapshot(stack.repository / "yolov8n.versions" / "1")
    assert {name: published[name] for name in manifest["files"]} == manifest["files"]
