"""A version changed after its publish is never loaded nor given traffic, on every path,
against the real embedded tritonserver (moto for S3).

Each tampered ``model.py`` gets a line that would write a marker file when Triton's python
backend imports it: the marker never existing proves the changed code never ran. Each
refusal is one line naming the file; stable keeps serving throughout.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.eventually import eventually
from tests.integration.conftest import CLI, IMGSZ, CliResult, S3Fleet, Stack
from tests.integration.public_clients import MODEL as PUBLIC_MODEL
from tests.integration.public_clients import UnpinnedTraffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def inject(model_py: Path, marker: Path) -> None:
    """Append a line that writes ``marker`` when Python imports ``model_py``."""
    with open(model_py, "a", encoding="utf-8") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').write('injected code ran')\n")


@contextmanager
def long_running(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running command writing to ``log``, stopped as Ctrl-C does afterwards."""
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def version_dir(stack: Stack, model: str, version: str) -> Path:
    return stack.repository / f"{model}.versions" / version


def refused(result: CliResult, *words: str) -> str:
    """The one error line of a refused command, holding each of ``words``."""
    assert result.code == 1, (result.code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def status(stack: Stack, model: str) -> dict:
    result = stack.cli("status", model, "--json", check=False)
    document: dict = json.loads(result.stdout)
    return document


def serves(url: str, model: str, version: str) -> bool:
    """One pinned inference on ``version`` of ``model`` answers with the detector's output."""
    size = int(IMGSZ)
    data = np.zeros((1, 3, size, size), dtype=np.float32)
    tensor = grpcclient.InferInput("images", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    client = grpcclient.InferenceServerClient(url)
    try:
        result = client.infer(f"{model}.versions", [tensor], model_version=version)
        return result.as_numpy("output0") is not None
    finally:
        client.close()


def two_versions(stack: Stack, model: str, weights: Path) -> None:
    stack.publish(model, "1", weights)
    stack.publish(model, "2", weights)


def test_promote_of_a_canary_whose_model_py_changed_rolls_it_back_and_never_runs_it(
    shared: Stack, weights: Path, tmp_path: Path
) -> None:
    model, marker = "tamper-py", tmp_path / "marker"
    two_versions(shared, model, weights)
    inject(version_dir(shared, model, "2") / "model.py", marker)
    line = refused(
        shared.cli("promote", model, check=False),
        f"{model}.versions/2/model.py differs from its manifest",
        "rolled back: stable 1 serves 100%",
    )
    assert line.startswith(f"error: {model} version 2 refused:")
    document = status(shared, model)
    assert (document["stable"], document["canary"], document["weights"]) == ("1", None, {"1": 100})
    assert document["phase"] == "rolled_back"
    assert serves(shared.url, model, "1")
    history = shared.cli("history", model).stdout
    assert "refused canary 2" in history
    assert not marker.exists()


def test_set_weight_of_a_canary_whose_onnx_changed_is_refused(shared: Stack, weights: Path) -> None:
    model = "tamper-onnx"
    two_versions(shared, model, weights)
    onnx = version_dir(shared, model, "2") / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    refused(
        shared.cli("set-weight", model, "50", check=False),
        f"{model}.versions/2/model.onnx differs from its manifest",
    )
    assert status(shared, model)["weights"] == {"1": 100}
    assert serves(shared.url, model, "1")


def test_a_stable_without_its_manifest_is_refused_by_every_command_and_keeps_serving(
    shared: Stack, weights: Path
) -> None:
    model = "tamper-manifest"
    two_versions(shared, model, weights)
    manifest = version_dir(shared, model, "1") / "manifest.json"
    kept = manifest.read_bytes()
    manifest.unlink()
    said = f"{model}.versions/1/manifest.json is missing"
    # status prints the status (REFUSED in it), then exits 1 with the line.
    result = shared.cli("status", model, check=False)
    assert "REFUSED 1" in result.stdout
    refused(result, said)
    refused(shared.cli("reconcile", model, check=False), "STABLE", said)
    refused(shared.cli("rollback", model, check=False), "STABLE", said)
    refused(
        shared.cli("publish", model, "3", "--weights", str(weights), check=False), "STABLE", said
    )
    refused(shared.cli("set-weight", model, "20", check=False), "promote the verified canary 2")
    # What Triton loaded keeps serving; the history says it once.
    assert serves(shared.url, model, "1") and serves(shared.url, model, "2")
    history = shared.cli("history", model).stdout
    assert history.count("refused stable 1") == 1
    manifest.write_bytes(kept)
    assert shared.cli("status", model, check=False).code == 0


def test_a_config_changed_outside_the_manager_is_refused(shared: Stack, weights: Path) -> None:
    model = "tamper-config"
    shared.publish(model, "1", weights)
    config = shared.repository / f"{model}.versions" / "config.pbtxt"
    config.write_text(
        config.read_text()
        + '\nparameters { key: "EXECUTION_ENV_PATH" value { string_value: "/tmp/env.tgz" } }\n'
    )
    refused(
        shared.cli("policy", model, "--all", check=False),
        f"{model}.versions/config.pbtxt differs from the config repo-manager wrote",
    )
    assert serves(shared.url, model, "1")


def test_after_a_triton_restart_a_tampered_stable_is_never_loaded_again(
    stack: Stack, weights: Path, tmp_path: Path
) -> None:
    """The long-running manager re-applies the desired state after a restart: not with
    bytes that changed since the publish; it says so on every pass and stays up."""
    model, marker = "tamper-restart", tmp_path / "marker"
    stack.publish(model, "1", weights)
    inject(version_dir(stack, model, "1") / "model.py", marker)
    log = tmp_path / "manager.log"
    command = [*CLI, "--repository", str(stack.repository), "--url", stack.url]
    with long_running([*command, "reconcile", "--watch", "--interval", "1"], log) as manager:
        stack.restart()
        assert eventually(lambda: log.read_text().count(f"STABLE {model} version 1") >= 2, 60)
        assert manager.poll() is None
        assert f"{model}.versions/1/model.py differs from its manifest" in log.read_text()
        client = grpcclient.InferenceServerClient(stack.url)
        try:
            assert not client.is_model_ready(f"{model}.versions", "1")
        finally:
            client.close()
    assert not marker.exists()


def test_serve_starts_and_says_so_when_stable_was_tampered(
    stack: Stack, weights: Path, tmp_path: Path
) -> None:
    """``serve`` on a repository whose stable changed: the server comes up, the model is
    not loaded, the line says why."""
    from repo_manager.server import ServerPorts

    model, marker = "tamper-serve", tmp_path / "marker"
    stack.publish(model, "1", weights)
    stack.server.stop()
    inject(version_dir(stack, model, "1") / "model.py", marker)
    ports = ServerPorts.free()
    log = tmp_path / "serve.log"
    command = [
        *CLI, "--repository", str(stack.repository), "serve", "--grpc-port", str(ports.grpc),
        "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
    ]  # fmt: skip
    with long_running(command, log) as serve:
        assert eventually(lambda: f"error: STABLE {model} version 1" in log.read_text(), 120)
        assert serve.poll() is None  # up, serving what it may
    assert not marker.exists()


def test_on_s3_a_tampered_canary_is_rolled_back_by_reconcile(
    fleet1: S3Fleet, weights: Path, tmp_path: Path
) -> None:
    import boto3

    model, marker = "tamper-s3", tmp_path / "marker"
    fleet1.publish(model, "1", weights)
    fleet1.publish(model, "2", weights)
    s3 = boto3.client("s3", endpoint_url=fleet1.endpoint)
    key = f"repo/{model}.versions/2/model.py"
    body = s3.get_object(Bucket=fleet1.bucket, Key=key)["Body"].read()
    injected = f"\nopen({str(marker)!r}, 'w').write('injected code ran')\n"
    s3.put_object(Bucket=fleet1.bucket, Key=key, Body=body + injected.encode())
    refused(
        fleet1.cli("reconcile", model, check=False),
        f"{model}.versions/2/model.py differs from its manifest",
        "rolled back: stable 1 serves 100%",
    )
    # The manifest edited to match the change is refused too: it is stable's now.
    manifest_key = f"repo/{model}.versions/1/manifest.json"
    manifest = json.loads(s3.get_object(Bucket=fleet1.bucket, Key=manifest_key)["Body"].read())
    manifest["files"]["model.py"] = "0" * 64
    s3.put_object(Bucket=fleet1.bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    refused(fleet1.cli("reconcile", model, check=False), "STABLE", "model.py differs")
    assert serves(fleet1.urls[0], model, "1")
    assert not marker.exists()


def test_promote_over_a_stable_whose_model_py_changed_never_runs_it_nor_drops_a_request(
    shared: Stack, weights: Path, tmp_path: Path
) -> None:
    """The soak's round 12: a verified canary may replace a tampered stable, and no load
    call may reach Triton while the tampered version is in the policy on disk (loading the
    public name's ensemble reloaded the versions model from disk and ran the marker)."""
    model, marker = PUBLIC_MODEL, tmp_path / "marker"
    two_versions(shared, model, weights)
    inject(version_dir(shared, model, "1") / "model.py", marker)
    with UnpinnedTraffic(shared.url, threads=3) as traffic:
        shared.cli("promote", model)
    document = status(shared, model)
    assert (document["stable"], document["phase"]) == ("2", "succeeded")
    assert not marker.exists()
    assert traffic.sent > 0 and traffic.failures == []
