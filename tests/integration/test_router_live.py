"""The Router against a real tritonserver: pinning, split, stickiness, fallback, live reload.

The Router calls the versions models (``m.versions``, ``yolo.versions``) that the manager
names after the published names ``m`` and ``yolo``. ``m`` has two python-backend versions
that answer ``y = x + version``, so every answer proves which version served it; version 2
raises when ``x[0] < 0``, a canary that fails on some inputs. Model ``yolo`` answers a
fixed YOLOv8-shaped tensor for ``detect``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from repo_manager import RoutedResult, Router, RoutingError, TritonUnavailableError
from repo_manager.metrics import start_metrics_server
from repo_manager.phases import Phase
from repo_manager.server import EmbeddedTriton, ServerPorts, free_port
from repo_manager.state import RolloutState, state_key
from repo_manager.storage import LocalStorage
from tests.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ADD_VERSION_MODEL = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.version = int(args["model_version"])

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                if self.version == 2 and x.flat[0] < 0:
                    raise ValueError("canary cannot handle negative inputs")
                y = (x + self.version).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
            return responses
    """
)

# One square (class 1) centred in the 64x64 input and a weaker overlapping duplicate.
YOLO_MODEL = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            raw = np.zeros((1, 6, 84), np.float32)
            raw[0, :, 0] = [32, 32, 16, 8, 0.1, 0.95]
            raw[0, :, 1] = [33, 32, 16, 8, 0.1, 0.60]
            return [pb_utils.InferenceResponse([pb_utils.Tensor("output0", raw)])
                    for _ in requests]
    """
)


def model_config(versions: list[int]) -> str:
    return json.dumps(
        {
            "name": "m.versions",
            "backend": "python",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
            "instance_group": [{"kind": "KIND_CPU", "count": 1}],
            "version_policy": {"specific": {"versions": versions}},
        }
    )


YOLO_CONFIG = json.dumps(
    {
        "name": "yolo.versions",
        "backend": "python",
        "max_batch_size": 1,
        "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": [3, 64, 64]}],
        "output": [{"name": "output0", "data_type": "TYPE_FP32", "dims": [6, 84]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": {
            "class_names": {"string_value": json.dumps(["circle", "square"])},
            "imgsz": {"string_value": "64"},
        },
        "version_policy": {"specific": {"versions": [1]}},
    }
)


@dataclass(kw_only=True)
class Live:
    url: str
    repository: Path
    server: EmbeddedTriton
    generation: int = 0

    def route(self, weights: dict[str, int], *, model: str = "m", canary: str | None = "2") -> int:
        """Write the manager's state document (as the manager would); returns its generation."""
        self.generation += 1
        state = RolloutState(
            model=model,
            phase=Phase.PROGRESSING if canary else Phase.INITIALIZED,
            stable="1",
            canary=canary,
            weights=weights,
            generation=self.generation,
        )
        LocalStorage(self.repository).write_bytes_atomic(state_key(model), state.to_json())
        return self.generation

    def router(self, **kw: Any) -> Router:
        return Router("m", self.url, self.repository, **kw)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    repository = tmp_path_factory.mktemp("model_repository")
    for version in (1, 2):
        (repository / "m.versions" / str(version)).mkdir(parents=True)
        (repository / "m.versions" / str(version) / "model.py").write_text(ADD_VERSION_MODEL)
    (repository / "yolo.versions" / "1").mkdir(parents=True)
    (repository / "yolo.versions" / "1" / "model.py").write_text(YOLO_MODEL)
    log = repository.parent / "tritonserver.log"
    server = EmbeddedTriton(repository, ports=ServerPorts.free(), log_path=log)
    server.start()
    try:
        server.wait_ready()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.load_model("m.versions", config=model_config([1, 2]))
            client.load_model("yolo.versions", config=YOLO_CONFIG)
        yield Live(url=server.grpc_url, repository=repository, server=server)
    except BaseException:
        print(log.read_text()[-4000:] if log.exists() else "no tritonserver log")
        raise
    finally:
        server.stop()


def x_input(value: float = 1.0) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return [tensor]


def served_by(result: RoutedResult, value: float = 1.0) -> int:
    """The version that computed ``y`` (``y - x``), independent of what the Router claims."""
    y = result.as_numpy("y")
    assert y is not None
    return round(float(y[0, 0]) - value)


def binomial_ok(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": "m", **labels}) or 0.0


def test_every_request_is_pinned_to_the_version_the_router_reports(live: Live) -> None:
    live.route({"1": 50, "2": 50})
    with live.router() as router:
        for _ in range(200):
            routed = router.infer(x_input())
            assert served_by(routed) == int(routed.version) and not routed.fallback
        for v in ("1", "2"):
            assert served_by(router.infer(x_input(), version=v)) == int(v)


def test_weighted_split_over_2000_requests_is_within_binomial_tolerance(live: Live) -> None:
    live.route({"1": 80, "2": 20})
    with live.router() as router:
        served = Counter(served_by(router.infer(x_input())) for _ in range(2000))
    assert set(served) == {1, 2}
    assert binomial_ok(served[2], 2000, 0.20), served


def test_sticky_keys_stay_on_one_version_and_canary_keys_survive_a_weight_increase(
    live: Live,
) -> None:
    keys = [f"camera-{i}" for i in range(200)]
    live.route({"1": 70, "2": 30})
    with live.router(poll_interval=0.05) as router:
        first = {k: served_by(router.infer(x_input(), key=k)) for k in keys}
        for _ in range(3):
            assert {k: served_by(router.infer(x_input(), key=k)) for k in keys} == first
        generation = live.route({"1": 40, "2": 60})
        assert router.wait_for_generation(generation, timeout=2.0)
        after = {k: served_by(router.infer(x_input(), key=k)) for k in keys}
    on_canary_before = {k for k, v in first.items() if v == 2}
    on_canary_after = {k for k, v in after.items() if v == 2}
    assert on_canary_before <= on_canary_after
    assert binomial_ok(len(on_canary_before), len(keys), 0.3)
    assert binomial_ok(len(on_canary_after), len(keys), 0.6)


def test_failing_canary_falls_back_to_stable_and_metrics_count_it(live: Live) -> None:
    live.route({"1": 0, "2": 100})
    port = free_port()
    metrics_server = start_metrics_server(port, addr="127.0.0.1")
    before = (
        sample("repo_manager_router_fallbacks_total", version="2"),
        sample("repo_manager_router_requests_total", version="1", outcome="fallback"),
        sample("repo_manager_router_errors_total", version="2"),
    )
    try:
        with live.router() as router:
            healthy = [router.infer(x_input(1.0)) for _ in range(20)]
            broken = [router.infer(x_input(-1.0)) for _ in range(30)]
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        metrics_server.shutdown()
    assert all(r.version == "2" and not r.fallback and served_by(r) == 2 for r in healthy)
    assert all(r.version == "1" and r.fallback and served_by(r, -1.0) == 1 for r in broken)
    after = (
        sample("repo_manager_router_fallbacks_total", version="2"),
        sample("repo_manager_router_requests_total", version="1", outcome="fallback"),
        sample("repo_manager_router_errors_total", version="2"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [30, 30, 30]
    assert b'repo_manager_router_fallbacks_total{model="m",version="2"}' in scraped


def test_requests_to_an_unloaded_canary_are_served_by_stable(live: Live) -> None:
    live.route({"1": 50, "2": 50})
    with grpcclient.InferenceServerClient(live.url) as control:
        control.load_model("m.versions", config=model_config([1]))
        try:
            with live.router() as router:
                results = [router.infer(x_input()) for _ in range(100)]
                with pytest.raises(RoutingError, match="version 2 failed"):
                    router.infer(x_input(), version="2")
        finally:
            control.load_model("m.versions", config=model_config([1, 2]))
    assert all(served_by(r) == 1 and r.version == "1" for r in results)
    assert 20 < sum(r.fallback for r in results) < 80


def test_weight_change_from_another_process_reaches_a_live_router_within_1s(
    live: Live,
) -> None:
    live.route({"1": 100, "2": 0})
    generation = live.generation + 1
    writer = textwrap.dedent(
        f"""
        import time
        from repo_manager.phases import Phase
        from repo_manager.state import RolloutState, state_key
        from repo_manager.storage import open_storage

        state = RolloutState(model="m", phase=Phase.PROGRESSING, stable="1", canary="2",
                             weights={{"1": 0, "2": 100}}, generation={generation})
        open_storage({str(live.repository)!r}).write_bytes_atomic(
            state_key("m"), state.to_json())
        print(time.time())
        """
    )
    with live.router() as router:
        assert {router.infer(x_input()).version for _ in range(20)} == {"1"}
        done = subprocess.run(
            [sys.executable, "-c", writer], capture_output=True, text=True, check=True
        )
        written_at = float(done.stdout)
        assert router.wait_for_generation(generation, timeout=1.0)
        seen_after = time.time() - written_at
        live.generation = generation
        results = [router.infer(x_input()) for _ in range(20)]
    assert seen_after < 1.0
    assert all(served_by(r) == 2 for r in results)


def test_one_router_shared_by_threads_serves_every_request_correctly(live: Live) -> None:
    live.route({"1": 50, "2": 50})
    failures: list[str] = []

    def work(router: Router, thread: int) -> None:
        for i in range(150):
            value = float(thread * 1000 + i)
            routed = router.infer(x_input(value), key=f"{thread}-{i}")
            if served_by(routed, value) != int(routed.version) or routed.fallback:
                failures.append(f"thread {thread} request {i}: {routed}")

    with live.router() as router:
        threads = [threading.Thread(target=work, args=(router, t)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=50)
    assert not failures


def test_requests_avoid_an_unreachable_server_in_the_list(live: Live) -> None:
    live.route({"1": 50, "2": 50})
    dead = f"127.0.0.1:{free_port()}"
    with Router("m", [dead, live.url], live.repository, server_retry_after=30) as router:
        results = [router.infer(x_input()) for _ in range(50)]
    assert all(served_by(r) == int(r.version) and not r.fallback for r in results)


def test_no_reachable_server_raises_triton_unavailable(live: Live) -> None:
    live.route({"1": 50, "2": 50})
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with Router("m", dead, live.repository) as router, pytest.raises(TritonUnavailableError):
        router.infer(x_input())


def test_detect_reads_the_model_config_and_returns_boxes_in_image_pixels(live: Live) -> None:
    live.route({"1": 100}, model="yolo", canary=None)
    with Router("yolo", live.url, live.repository) as router:
        found = router.detect(np.zeros((64, 128, 3), np.uint8))
    # 128x64 letterboxes into 64x64 at scale 0.5 with 16 rows of padding on top.
    assert found.version == "1" and len(found) == 1
    np.testing.assert_allclose(found.boxes, [[48, 24, 80, 40]])
    assert found.labels == ["square"] and found.names == {0: "circle", 1: "square"}


def _our_registrations(url: str) -> list[str]:
    with grpcclient.InferenceServerClient(url) as client:
        status = client.get_system_shared_memory_status(as_json=True)
    return [r["name"] for r in status.get("regions", {}).values() if "repo-manager" in r["name"]]


def test_shared_memory_router_under_threads_gives_the_same_outputs_as_plain_grpc(
    live: Live,
) -> None:
    live.route({"1": 50, "2": 50})
    mismatches: list[str] = []

    def work(shared: Router, plain: Router, thread: int) -> None:
        for i in range(60):
            batch = 1 + (thread + i) % 3  # batch sizes change: regions grow and are re-made
            values = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4) + thread * 1000 + i
            tensor = grpcclient.InferInput("x", [batch, 4], "FP32")
            tensor.set_data_from_numpy(values)
            key = f"{thread}-{i}"
            a, b = shared.infer([tensor], key=key), plain.infer([tensor], key=key)
            if a.version != b.version or not np.array_equal(a.as_numpy("y"), b.as_numpy("y")):
                mismatches.append(f"thread {thread} request {i}")

    # This Router's regions only: the module's server is shared, and what an earlier test
    # left is that test's to prove (seen under parallel load before unregistering retried
    # while Triton 2.51 refused regions a request still held).
    earlier = set(_our_registrations(live.url))
    with live.router(shared_memory=True) as shared, live.router(shared_memory=False) as plain:
        threads = [threading.Thread(target=work, args=(shared, plain, t)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=50)
        in_use = [n for n in _our_registrations(live.url) if n not in earlier]
    assert not mismatches
    assert 1 <= len(in_use) <= 6  # one region per thread at a time, and it was used


def test_closing_a_shared_memory_router_unregisters_and_unlinks_every_region(
    live: Live,
) -> None:
    from repo_manager.shm import leaked_regions

    live.route({"1": 100}, canary=None)
    earlier = set(_our_registrations(live.url))  # see the test above
    router = live.router(shared_memory=True)
    threads = [threading.Thread(target=router.infer, args=(x_input(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    ours = f"-{os.getpid()}-"  # other test processes may hold regions of their own

    def our_regions() -> list[str]:
        return [n for n in leaked_regions() if ours in n]

    def registered() -> list[str]:
        return [n for n in _our_registrations(live.url) if n not in earlier]

    assert our_regions() and registered()
    router.close()
    assert our_regions() == []
    # Unregistered before close returned: a request's last answer can reach the client
    # before Triton drops its hold on the region (2.51 then refuses the unregister, and the
    # channel retries).
    assert registered() == []


def forgot_every_region(client: grpcclient.InferenceServerClient) -> bool:
    try:
        client.unregister_system_shared_memory()
    except InferenceServerException:
        return False
    return True


def test_a_server_that_forgot_the_regions_costs_one_plain_request_then_shm_resumes(
    live: Live,
) -> None:
    live.route({"1": 100}, canary=None)
    with live.router(shared_memory=True) as router:
        assert served_by(router.infer(x_input(3.0)), 3.0) == 1
        with grpcclient.InferenceServerClient(live.url) as client:
            # As a restarted server would have. The answer can reach the client before Triton
            # lets go of the request's region, and 2.51 refuses to unregister a held region.
            assert eventually(lambda: forgot_every_region(client), 10)
        assert served_by(router.infer(x_input(4.0)), 4.0) == 1  # over plain gRPC
        assert served_by(router.infer(x_input(5.0)), 5.0) == 1
        assert _our_registrations(live.url)  # registered again
