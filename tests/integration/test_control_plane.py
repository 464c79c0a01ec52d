"""``serve`` locks Triton's control plane: a client without the key can infer but not load,
unload or register shared memory; the manager, a Router with shared memory and the
weighted public name work with it (real embedded tritonserver started by ``serve``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from repo_manager import Router
from repo_manager.server import ServerPorts
from repo_manager.transport import CONTROL_KEY_ENV, GRPC_CONTROL_HEADER
from tests.eventually import eventually
from tests.integration.conftest import CLI, IMGSZ, CliResult, publish_args, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "locked"
EVIL = "evil"


@dataclass(kw_only=True)
class Served:
    repository: Path
    ports: ServerPorts
    log: Path
    triton_log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def cli(self, *args: str, check: bool = True) -> CliResult:
        command = [*CLI, "--repository", str(self.repository), "--url", self.url, *args]
        return run_cli(command, args, check=check, timeout=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("locked")
    ports = ServerPorts.free()
    running = Served(
        repository=root / "model_repository",
        ports=ports,
        log=root / "serve.log",
        triton_log=root / "triton.log",
    )
    command = [
        *CLI, "--repository", str(running.repository), "serve",
        "--grpc-port", str(ports.grpc), "--http-port", str(ports.http),
        "--metrics-port", str(ports.metrics), "--log-file", str(running.triton_log),
    ]  # fmt: skip
    with open(running.log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        assert eventually(lambda: "need the control key" in running.log.read_text(), 120), (
            running.log.read_text()
        )
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def image() -> list[grpcclient.InferInput]:
    size = int(IMGSZ)
    data = np.zeros((1, 3, size, size), dtype=np.float32)
    tensor = grpcclient.InferInput("images", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def keyless(url: str) -> grpcclient.InferenceServerClient:
    """A plain tritonclient: no control key (what anyone on the network has)."""
    return grpcclient.InferenceServerClient(url)


def plant_model(repository: Path, marker: Path) -> None:
    """A model whose model.py would write ``marker`` when Triton loads it."""
    folder = repository / EVIL / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (repository / EVIL / "config.pbtxt").write_text(
        f'name: "{EVIL}"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [1] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [1] }\n'
    )


def test_without_the_key_a_client_infers_but_cannot_load_unload_or_register(
    served: Served, weights: Path, tmp_path: Path
) -> None:
    served.cli(*publish_args(MODEL, "1", weights))
    marker = tmp_path / "marker"
    plant_model(served.repository, marker)
    client = keyless(served.url)
    try:
        assert client.infer(MODEL, image()).as_numpy("output0") is not None
        for attempt in (
            lambda: client.load_model(EVIL),
            lambda: client.unload_model(MODEL),
            lambda: client.register_system_shared_memory("r", "/keyless", 64),
            lambda: client.get_model_repository_index(),
            lambda: client.update_log_settings({"log_file": str(tmp_path / "x.log")}),
        ):
            with pytest.raises(InferenceServerException) as raised:
                attempt()
            assert os.environ[CONTROL_KEY_ENV] not in str(raised.value)
        assert client.is_model_ready(MODEL) and not client.is_model_ready(EVIL)
    finally:
        client.close()
    # Over HTTP too.
    load = urllib.request.Request(
        f"http://127.0.0.1:{served.ports.http}/v2/repository/models/{EVIL}/load", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(load, timeout=30)
    assert not marker.exists()
    # The key reaches neither the output of serve nor Triton's log.
    key = os.environ[CONTROL_KEY_ENV]
    assert key not in served.log.read_text() and key not in served.triton_log.read_text()


def test_with_the_key_the_manager_routers_with_shared_memory_and_the_weighted_name_work(
    served: Served, weights: Path
) -> None:
    if not (served.repository / f"{MODEL}.versions" / "1").exists():
        served.cli(*publish_args(MODEL, "1", weights))
    served.cli(*publish_args(MODEL, "2", weights))
    served.cli("set-weight", MODEL, "50")
    served.cli("policy", MODEL, "--unpinned", "weighted")
    client = keyless(served.url)  # unpinned requests through the weighted public name
    try:
        for _ in range(10):
            assert client.infer(MODEL, image()).as_numpy("output0") is not None
    finally:
        client.close()
    with Router(MODEL, url=served.url, repository=served.repository, shared_memory=True) as router:
        versions = {router.infer(image()).version for _ in range(30)}
        assert versions == {"1", "2"}
        # Its regions were registered (a call that needs the key, so the Router sent it).
        keyed = grpcclient.InferenceServerClient(served.url)
        try:
            regions = keyed.get_system_shared_memory_status(
                as_json=True, headers={GRPC_CONTROL_HEADER: os.environ[CONTROL_KEY_ENV]}
            )
        finally:
            keyed.close()
        assert regions.get("regions"), regions
    served.cli("promote", MODEL)
    document = json.loads(served.cli("status", MODEL, "--json").stdout)
    assert document["stable"] == "2"
