"""S3 repositories and fleets: real moto S3 server, real tritonservers reading S3 directly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from repo_manager import Router
from repo_manager.names import versions_model_name
from repo_manager.repository import ModelRepository
from repo_manager.storage import open_storage
from tests.integration.conftest import S3_SECRET, S3Fleet, publish_args
from tests.integration.test_rollout import traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = "yolov8n"


def status(fleet: S3Fleet) -> dict:
    return json.loads(fleet.cli("status", MODEL, "--json").stdout)


def ready_by_server(doc: dict) -> dict[str, set[str]]:
    return {
        s["url"]: {v["version"] for v in s["versions"] if v["state"] == "READY"}
        for s in doc["servers"]
    }


def served_requests(metrics_url: str) -> float:
    """Successful inference requests a server counted (all versions of the model)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{")
        and f'model="{versions_model_name(MODEL)}"' in line
    )


def router(fleet: S3Fleet) -> Router:
    return Router(
        MODEL,
        url=fleet.urls,
        repository=fleet.repository,
        s3_endpoint=fleet.endpoint,
        timeout=30,
    )


def test_publish_canary_promote_on_three_servers_reading_one_s3_repository(
    fleet3: S3Fleet, weights: Path
) -> None:
    fleet3.publish(MODEL, "1", weights)
    assert all(v == {"1"} for v in ready_by_server(status(fleet3)).values())

    with router(fleet3) as live, traffic(live, threads=4) as record:
        fleet3.publish(MODEL, "2", weights, "--canary-weight", "50")
        doc = status(fleet3)
        assert doc["canary"] == "2" and doc["weights"] == {"1": 50, "2": 50}
        assert all(v == {"1", "2"} for v in ready_by_server(doc).values()), doc["servers"]
        time.sleep(1.0)
        # A weight change made in another process reaches the Router through S3 in 1 s.
        fleet3.cli("set-weight", MODEL, "40")
        returned = time.monotonic()
        while live.table is None or live.table.weights != {"1": 60, "2": 40}:
            assert time.monotonic() - returned < 1.0, "Router did not follow S3 within 1 s"
            time.sleep(0.01)
        time.sleep(1.0)
        fleet3.cli("promote", MODEL, "--drain-seconds", "1.0")
        promoted = time.monotonic()
        time.sleep(1.0)

    assert record.failures == []
    served = record.versions_since(0)
    assert served["1"] > 0 and served["2"] > 0
    assert set(record.versions_since(promoted)) <= {"2"}
    doc = status(fleet3)
    assert doc["stable"] == "2" and doc["canary"] is None and doc["phase"] == "succeeded"
    assert all(v == {"2"} for v in ready_by_server(doc).values()), doc["servers"]
    # The Router spread the requests over every server.
    assert all(served_requests(s.metrics_url) > 0 for s in fleet3.servers)
    # Triton got the credentials from the environment; none of them logged the secret.
    for log in fleet3.logs.glob("triton-*.log"):
        assert S3_SECRET not in log.read_text(errors="replace")


def test_killed_server_mid_rollout_is_reported_and_reconciled_after_restart(
    fleet3: S3Fleet, weights: Path
) -> None:
    fleet3.publish(MODEL, "1", weights)
    fleet3.publish(MODEL, "2", weights, "--canary-weight", "30")
    victim = fleet3.servers[1]

    with router(fleet3) as live, traffic(live, threads=4) as record:
        time.sleep(1.0)
        victim.kill()
        killed = time.monotonic()
        time.sleep(2.0)

        doc = status(fleet3)  # the dead server is reported, not fatal
        dead = next(s for s in doc["servers"] if s["url"] == victim.grpc_url)
        assert dead["error"] and "unreachable" in dead["error"]
        text = fleet3.cli("status", MODEL).stdout
        assert f"server {victim.grpc_url}: Triton unreachable" in text

        refused = fleet3.cli("promote", MODEL, check=False)
        assert refused.code == 1
        assert refused.stderr.count("\n") == 1 and victim.grpc_url in refused.stderr

        fleet3.start(1)
        report = json.loads(fleet3.cli("reconcile", "--json").stdout)
        assert report[0]["desired"] == ["1", "2"]
        assert report[0]["actions"] == [f"loaded 1,2 on {victim.grpc_url}"]
        assert all(v == {"1", "2"} for v in ready_by_server(status(fleet3)).values())
        time.sleep(1.5)  # the Router retries the restarted server after server_retry_after
        restarted = time.monotonic()
        fleet3.cli("promote", MODEL, "--drain-seconds", "1.0")
        time.sleep(1.0)

    assert record.failures == []
    assert len(record.versions_since(killed)) == 2  # both versions kept serving
    assert record.versions_since(restarted).total() > 0
    assert served_requests(fleet3.servers[1].metrics_url) > 0  # back in rotation
    doc = status(fleet3)
    assert doc["stable"] == "2"
    assert all(v == {"2"} for v in ready_by_server(doc).values()), doc["servers"]


def test_publish_killed_during_upload_leaves_no_version_and_can_be_repeated(
    fleet1: S3Fleet, weights: Path
) -> None:
    fleet1.publish(MODEL, "1", weights)
    process = subprocess.Popen(
        fleet1.command(*publish_args(MODEL, "2", weights), "-v"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + 240
    for line in process.stderr:
        seen.append(line)
        if line.startswith("  uploading model.onnx"):
            os.kill(process.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, seen
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, seen

    client = boto3.client("s3", endpoint_url=fleet1.endpoint)
    listing = client.list_objects_v2(Bucket=fleet1.bucket, Prefix="repo/yolov8n.versions/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    open_uploads = [
        u["Key"] for u in client.list_multipart_uploads(Bucket=fleet1.bucket).get("Uploads", [])
    ]
    # It was killed halfway: parts of model.onnx sit in an open multipart upload.
    assert any("/.staging-2/" in k for k in [*keys, *open_uploads]), (keys, open_uploads)
    assert not any("checksums verified" in line for line in seen)
    assert not any(k.startswith("repo/yolov8n.versions/2/") for k in keys), keys

    repository = ModelRepository(open_storage(fleet1.repository, s3_endpoint=fleet1.endpoint))
    assert repository.versions(MODEL) == ["1"]
    doc = status(fleet1)
    assert doc["stable"] == "1" and doc["canary"] is None
    assert [v["version"] for v in doc["versions"]] == ["1"]
    # Nor can Triton load it: there is no version 2 folder.
    with grpcclient.InferenceServerClient(fleet1.urls[0]) as triton:
        versions_model = versions_model_name(MODEL)
        config = triton.get_model_config(versions_model, as_json=True)["config"]
        config["version_policy"] = {"specific": {"versions": [2]}}
        with pytest.raises(InferenceServerException, match="at least one version"):
            triton.load_model(versions_model, config=json.dumps(config))
        triton.load_model(versions_model)  # back to what the on-disk config names

    fleet1.publish(MODEL, "2", weights)
    doc = status(fleet1)
    assert doc["canary"] == "2"
    assert {v["version"]: v["state"] for v in doc["versions"]} == {"1": "READY", "2": "READY"}
    listing = client.list_objects_v2(Bucket=fleet1.bucket, Prefix="repo/yolov8n.versions/")
    assert not any("/.staging-" in item["Key"] for item in listing.get("Contents", []))
    assert client.list_multipart_uploads(Bucket=fleet1.bucket).get("Uploads", []) == []
