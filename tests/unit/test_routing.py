"""Router logic without a server: weighted and sticky choice, fallback, reload, detect().

A small fake stands in for tritonclient's gRPC client; everything Triton itself does is
proven in tests/integration/test_router_live.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import REGISTRY, generate_latest
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from repo_manager import Router, RoutingError, TritonUnavailableError
from repo_manager.errors import InvalidInputError, TritonError
from repo_manager.metrics import version_metrics
from repo_manager.phases import Phase
from repo_manager.routing import RoutePlan, key_point
from repo_manager.state import RolloutState, RoutingTable, state_key
from repo_manager.storage import LocalStorage

MODEL = "det"
UNREACHABLE = "failed to connect to all addresses; last error: Connection refused"


def table(weights: dict[str, int], *, stable: str = "1", canary: str | None = "2") -> RoutingTable:
    return RoutingTable(model=MODEL, stable=stable, canary=canary, weights=weights, generation=1)


def write_state(repo: Path, weights: dict[str, int], generation: int, **kw: Any) -> None:
    state = RolloutState(
        model=kw.get("model", MODEL),
        phase=Phase.PROGRESSING,
        stable=kw.get("stable", "1"),
        canary=kw.get("canary", "2"),
        weights=weights,
        generation=generation,
    )
    LocalStorage(repo).write_bytes_atomic(state_key(MODEL), state.to_json())


def binomial_ok(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


class FakeResult:
    def __init__(self, version: str, outputs: dict[str, np.ndarray] | None = None) -> None:
        self.version = version
        self.outputs = outputs or {}

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


class FakeClient:
    """Answers like tritonclient's gRPC client: ``fail`` maps a version to its exception."""

    def __init__(self, url: str, *, config: Any = None) -> None:
        self.url = url
        self.fail: dict[str, InferenceServerException] = {}
        self.down = False
        self.calls: list[str] = []
        self.outputs: dict[str, np.ndarray] = {}
        self.config = config
        self.closed = False

    def infer(self, model_name: str, inputs: Any, model_version: str = "", **kw: Any) -> Any:
        assert model_version, "the Router must always pin a version"
        if self.down:
            raise InferenceServerException(UNREACHABLE, status="StatusCode.UNAVAILABLE")
        self.calls.append(model_version)
        if model_version in self.fail:
            raise self.fail[model_version]
        return FakeResult(model_version, self.outputs)

    def get_model_config(self, model_name: str) -> Any:
        return service_pb2.ModelConfigResponse(config=self.config)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_state(tmp_path, {"1": 90, "2": 10}, generation=1)
    return tmp_path


def make_router(repo: Path, urls: list[str] | None = None, **kw: Any) -> tuple[Router, list[Any]]:
    clients: list[FakeClient] = []
    config = kw.pop("config", None)

    def factory(url: str) -> FakeClient:
        clients.append(FakeClient(url, config=config))
        return clients[-1]

    router = Router(MODEL, ["a:1"] if urls is None else urls, repo, client_factory=factory, **kw)
    return router, clients


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": MODEL, **labels}) or 0.0


def fallback_counts() -> tuple[float, float, float]:
    """(fallbacks away from 2, errors of 2, requests served by 1 as a fallback)."""
    return (
        sample("repo_manager_router_fallbacks_total", version="2"),
        sample("repo_manager_router_errors_total", version="2"),
        sample("repo_manager_router_requests_total", version="1", outcome="fallback"),
    )


# ---- choosing a version ------------------------------------------------------------------


@pytest.mark.parametrize("canary_weight", [1, 10, 50, 90])
def test_random_split_follows_weights_within_binomial_tolerance(canary_weight: int) -> None:
    plan = RoutePlan.build(MODEL, table({"1": 100 - canary_weight, "2": canary_weight}))
    n = 50_000
    hits = sum(plan.choose() == "2" for _ in range(n))
    assert binomial_ok(hits, n, canary_weight / 100)


def test_zero_and_full_weights_send_everything_to_one_version() -> None:
    only_stable = RoutePlan.build(MODEL, table({"1": 100, "2": 0}))
    only_canary = RoutePlan.build(MODEL, table({"1": 0, "2": 100}))
    assert {only_stable.choose() for _ in range(1000)} == {"1"}
    assert {only_canary.choose(f"k{i}") for i in range(1000)} == {"2"}


def test_weights_that_do_not_sum_to_100_are_normalised() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 3, "2": 1}))
    hits = sum(plan.choose() == "2" for _ in range(40_000))
    assert binomial_ok(hits, 40_000, 0.25)


def test_a_table_without_weights_routes_to_stable() -> None:
    plan = RoutePlan.build(MODEL, table({}, canary=None))
    assert plan.choose() == "1" and plan.fallback == {"1": None}


def test_no_table_raises_routing_error() -> None:
    with pytest.raises(RoutingError, match="no routing table"):
        RoutePlan.build(MODEL, None).choose()


def test_sticky_key_always_gets_the_same_version() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 50, "2": 50}))
    for i in range(200):
        assert len({plan.choose(f"user-{i}") for _ in range(20)}) == 1


def test_sticky_keys_split_by_weight() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 80, "2": 20}))
    n = 20_000
    hits = Counter(plan.choose(f"camera-{i}") for i in range(n))
    assert binomial_ok(hits["2"], n, 0.2)


def test_keys_on_canary_stay_there_as_its_weight_grows() -> None:
    keys = [f"session-{i}" for i in range(5000)] + list(range(5000))
    on_canary_before: set[Any] = set()
    for weight in (1, 5, 10, 25, 50, 75, 99, 100):
        plan = RoutePlan.build(MODEL, table({"1": 100 - weight, "2": weight}))
        on_canary = {k for k in keys if plan.choose(k) == "2"}
        assert on_canary_before <= on_canary, f"keys left the canary at weight {weight}"
        on_canary_before = on_canary
    assert len(on_canary_before) == len(keys)


def test_key_hash_is_the_same_in_every_process() -> None:
    code = "from repo_manager.routing import key_point; print(repr(key_point('user-42')))"
    seen = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        seen.add(float(out.stdout))
    assert seen == {key_point("user-42")}
    assert 0.0 <= key_point("user-42") < 100.0


def test_key_point_formula_is_pinned_so_other_clients_can_reproduce_it() -> None:
    # crc32 = 0x7D06B873; times 0x9E3779B97F4A7C15 mod 2**64; top 53 bits; * 100 / 2**53
    expected = (((zlib.crc32(b"user-42") * 0x9E3779B97F4A7C15) % 2**64) >> 11) * 100 / 2**53
    assert key_point("user-42") == expected == pytest.approx(37.46545405312063)


@pytest.mark.parametrize("family", ["user-{}", "{}", "cam/{}/0"])
def test_sequential_keys_spread_uniformly_over_the_range(family: str) -> None:
    n = 50_000
    buckets = np.bincount([int(key_point(family.format(i))) for i in range(n)], minlength=100)
    chi2 = float((((buckets - n / 100) ** 2) / (n / 100)).sum())
    assert chi2 < 99 + 5 * math.sqrt(2 * 99)  # 99 degrees of freedom, 5 sigma


def test_key_types_str_bytes_int_are_accepted_and_others_rejected() -> None:
    assert key_point("7") == key_point(b"7") == key_point(7)
    with pytest.raises(InvalidInputError):
        key_point(7.0)  # type: ignore[arg-type]


def test_canary_takes_the_top_of_the_key_range() -> None:
    plan = RoutePlan.build(MODEL, table({"1": 70, "2": 30}))
    assert plan.versions == ("1", "2") and plan.thresholds == (70.0,)


# ---- Router.infer ------------------------------------------------------------------------


def test_infer_pins_the_chosen_version_and_reports_it(repo: Path) -> None:
    with make_router(repo)[0] as router:
        served = Counter(router.infer([]).version for _ in range(2000))
    assert set(served) == {"1", "2"} and binomial_ok(served["2"], 2000, 0.1)


def test_explicit_version_overrides_the_table(repo: Path) -> None:
    router, [client] = make_router(repo)
    with router:
        result = router.infer([], version=7)
    assert result.version == "7" and client.calls == ["7"] and not result.fallback


def test_failing_canary_falls_back_to_stable_and_is_counted(repo: Path) -> None:
    write_state(repo, {"1": 0, "2": 100}, generation=2)
    router, [client] = make_router(repo)
    client.fail["2"] = InferenceServerException("boom", status="StatusCode.INTERNAL")
    before = fallback_counts()
    with router:
        result = router.infer([])
    assert (result.version, result.fallback) == ("1", True)
    assert client.calls == ["2", "1"]
    after = fallback_counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_failing_stable_falls_back_to_canary(repo: Path) -> None:
    write_state(repo, {"1": 100, "2": 0}, generation=2)
    router, [client] = make_router(repo)
    client.fail["1"] = InferenceServerException(
        "Request for unknown model: 'det' version 1 is not at ready state",
        status="StatusCode.UNAVAILABLE",
    )
    with router:
        assert router.infer([]).version == "2"


def test_both_versions_failing_raises_routing_error_chained(repo: Path) -> None:
    router, [client] = make_router(repo)
    for v in ("1", "2"):
        client.fail[v] = InferenceServerException(f"bad {v}", status="StatusCode.INTERNAL")
    with router, pytest.raises(RoutingError, match="failed too") as info:
        router.infer([])
    assert isinstance(info.value.__cause__, InferenceServerException)


def test_pinned_version_failure_is_not_hidden_by_a_fallback(repo: Path) -> None:
    router, [client] = make_router(repo)
    client.fail["2"] = InferenceServerException("bad", status="StatusCode.INTERNAL")
    with router, pytest.raises(RoutingError, match="version 2 failed"):
        router.infer([], version="2")
    assert client.calls == ["2"]


def test_stable_alone_failing_has_nothing_to_fall_back_to(repo: Path) -> None:
    write_state(repo, {"1": 100}, generation=2, canary=None)
    router, [client] = make_router(repo)
    client.fail["1"] = InferenceServerException("bad", status="StatusCode.INTERNAL")
    with router, pytest.raises(RoutingError, match="no other version"):
        router.infer([])


def test_unreachable_server_raises_triton_unavailable(repo: Path) -> None:
    router, [client] = make_router(repo)
    client.down = True
    with router, pytest.raises(TritonUnavailableError) as info:
        router.infer([])
    assert isinstance(info.value.__cause__, InferenceServerException)


def test_requests_spread_round_robin_over_servers(repo: Path) -> None:
    router, clients = make_router(repo, ["a:1", "b:1", "c:1"])
    with router:
        for _ in range(300):
            router.infer([])
    assert [len(c.calls) for c in clients] == [100, 100, 100]


def test_unreachable_server_is_skipped_and_the_request_served_by_another(repo: Path) -> None:
    router, clients = make_router(repo, ["a:1", "b:1"], server_retry_after=60)
    clients[0].down = True
    with router:
        results = [router.infer([]) for _ in range(50)]
    assert all(not r.fallback for r in results)
    assert len(clients[1].calls) == 50 and clients[0].calls == []


def test_all_servers_unreachable_raises_triton_unavailable(repo: Path) -> None:
    router, clients = make_router(repo, ["a:1", "b:1"])
    for c in clients:
        c.down = True
    with router, pytest.raises(TritonUnavailableError, match="no Triton server reachable"):
        router.infer([])


def test_router_is_shared_safely_by_threads(repo: Path) -> None:
    router, [client] = make_router(repo)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(500):
                router.infer([], key=i)
        except BaseException as exc:
            errors.append(exc)

    with router:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(client.calls) == 4000


def test_close_stops_the_poller_and_closes_clients(repo: Path) -> None:
    router, [client] = make_router(repo)
    router.close()
    router.close()
    assert client.closed and not router._poller.is_alive()
    with pytest.raises(RoutingError, match="closed"):
        router.infer([])


def test_metric_series_are_created_once_per_version() -> None:
    assert version_metrics(MODEL, "9") is version_metrics(MODEL, "9")


def test_metrics_expose_outcomes_and_cumulative_latency_buckets() -> None:
    series = version_metrics("metrics-model", "3")
    series.served(0.0004)
    series.served(0.003)
    series.served(7.0, fallback=True)
    series.attempt_failed()
    series.fell_back()
    series.request_failed()
    labels = {"model": "metrics-model", "version": "3"}

    def value(name: str, **extra: str) -> float | None:
        return REGISTRY.get_sample_value(name, {**labels, **extra})

    assert value("repo_manager_router_requests_total", outcome="ok") == 2
    assert value("repo_manager_router_requests_total", outcome="fallback") == 1
    assert value("repo_manager_router_requests_total", outcome="error") == 1
    assert value("repo_manager_router_errors_total") == 1
    assert value("repo_manager_router_fallbacks_total") == 1
    bucket = "repo_manager_router_latency_seconds_bucket"
    assert value(bucket, le="0.0005") == 1
    assert value(bucket, le="0.005") == 2
    assert value(bucket, le="5.0") == 2 and value(bucket, le="+Inf") == 3
    assert value("repo_manager_router_latency_seconds_count") == 3
    assert value("repo_manager_router_latency_seconds_sum") == pytest.approx(7.0034)
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE repo_manager_router_latency_seconds histogram" in text
    assert (
        'repo_manager_router_requests_total{model="metrics-model",outcome="ok",version="3"}' in text
    )


# ---- routing table reload ----------------------------------------------------------------


def test_weight_change_written_by_the_manager_reaches_a_live_router(repo: Path) -> None:
    router, _ = make_router(repo, poll_interval=0.02)
    with router:
        assert router.table is not None and router.table.weights == {"1": 90, "2": 10}
        write_state(repo, {"1": 40, "2": 60}, generation=2)
        assert router.wait_for_generation(2, timeout=1.0)
        assert router.table.weights == {"1": 40, "2": 60}
        assert router.plan.thresholds == (40.0,)


def test_corrupt_or_missing_table_keeps_the_last_good_one(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    router, _ = make_router(repo, poll_interval=10)
    path = repo / state_key(MODEL)
    with router, caplog.at_level(logging.WARNING, logger="repo_manager.routing"):
        path.write_text("{not json")
        assert router.refresh() == router.table and router.table is not None
        assert router.table.generation == 1
        path.write_text(json.dumps({"weights": {"1": 1}}))  # no model: corrupt too
        router.refresh()
        path.unlink()
        router.refresh()
        assert router.table is not None and router.table.weights == {"1": 90, "2": 10}
        write_state(repo, {"1": 50, "2": 50}, generation=3)
        assert router.refresh() is not None and router.table.generation == 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "corrupt routing table" in messages and "missing" in messages


def test_an_unchanged_file_is_not_read_again(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    router, _ = make_router(repo, poll_interval=10)
    reads: list[str] = []
    original = LocalStorage.read_bytes

    def counting_read(self: LocalStorage, key: str) -> bytes | None:
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(LocalStorage, "read_bytes", counting_read)
    with router:
        for _ in range(5):
            router.refresh()
    assert reads == []


def test_router_without_a_table_waits_for_one_and_allows_explicit_versions(
    tmp_path: Path,
) -> None:
    router, _ = make_router(tmp_path, poll_interval=0.02)
    with router:
        assert router.table is None
        with pytest.raises(RoutingError, match="no routing table"):
            router.infer([])
        assert router.infer([], version="3").version == "3"
        write_state(tmp_path, {"1": 100}, generation=1, canary=None)
        assert router.wait_for_generation(1, timeout=1.0)
        assert router.infer([]).version == "1"


def test_router_rejects_bad_arguments(repo: Path) -> None:
    with pytest.raises(InvalidInputError):
        make_router(repo, [])
    with pytest.raises(InvalidInputError):
        make_router(repo, poll_interval=0)


# ---- detect ------------------------------------------------------------------------------


def yolo_config(**params: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name=MODEL, max_batch_size=8)
    config.input.add(name="images", data_type=model_config_pb2.TYPE_FP32, dims=[3, 64, 64])
    config.output.add(name="output0", data_type=model_config_pb2.TYPE_FP32, dims=[6, 84])
    for k, v in params.items():
        config.parameters[k].string_value = v
    return config


def test_detect_maps_decoded_boxes_back_to_the_original_image(repo: Path) -> None:
    config = yolo_config(class_names=json.dumps(["circle", "square"]))
    router, [client] = make_router(repo, config=config)
    # A 128x64 (w x h) image letterboxes into 64x64 at scale 0.5 with 16 rows of padding.
    raw = np.zeros((1, 6, 84), np.float32)
    raw[0, :, 0] = [32, 32, 16, 8, 0.1, 0.95]  # square centred in the letterboxed input
    raw[0, :, 1] = [33, 32, 16, 8, 0.1, 0.60]  # overlapping duplicate: suppressed
    client.outputs = {"output0": raw}
    with router:
        found = router.detect(np.zeros((64, 128, 3), np.uint8), version="2")
    assert found.version == "2" and len(found) == 1
    np.testing.assert_allclose(found.boxes, [[48, 24, 80, 40]])
    assert found.labels == ["square"] and found.names == {0: "circle", 1: "square"}


def test_detect_reads_size_and_names_from_parameters_when_dims_are_dynamic(repo: Path) -> None:
    config = yolo_config(imgsz="[32, 48]", class_names=json.dumps({"0": "a", "1": "b"}))
    config.input[0].dims[:] = [3, -1, -1]
    router, [client] = make_router(repo, config=config)
    client.outputs = {"output0": np.zeros((1, 6, 10), np.float32)}
    with router:
        found = router.detect(np.zeros((10, 10, 3), np.uint8))
        spec = router._detector_spec()
    assert spec.size == (32, 48) and spec.class_names == ("a", "b") and len(found) == 0


def test_detect_rejects_images_that_are_not_hxwx3_uint8(repo: Path) -> None:
    router, _ = make_router(repo, config=yolo_config())
    with router:
        with pytest.raises(InvalidInputError, match="HxWx3"):
            router.detect(np.zeros((10, 10), np.uint8))
        with pytest.raises(InvalidInputError, match="uint8"):
            router.detect(np.zeros((10, 10, 3), np.float32))


def test_detect_refuses_a_model_whose_input_is_not_an_image(repo: Path) -> None:
    config = yolo_config()
    config.input[0].dims[:] = [4]
    router, _ = make_router(repo, config=config)
    with router, pytest.raises(TritonError, match="not \\[3, H, W\\]"):
        router.detect(np.zeros((10, 10, 3), np.uint8))


# ---- package hygiene ---------------------------------------------------------------------


def test_importing_the_package_pulls_no_heavy_dependency() -> None:
    code = (
        "import sys, repo_manager; "
        "heavy = {'torch', 'ultralytics', 'onnx', 'export', 'cv2'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("localhost:8001", True),
        ("127.0.0.1:8001", True),
        ("[::1]:8001", True),
        ("unix:/tmp/triton.sock", True),
        ("triton.internal:8001", False),
        ("10.0.0.7:8001", False),
    ],
)
def test_shared_memory_auto_is_on_only_for_a_server_on_this_machine(url: str, local: bool) -> None:
    from repo_manager.shm import is_local_url

    assert is_local_url(url) is local


def test_a_server_that_cannot_map_our_regions_gets_plain_grpc_and_no_more_attempts(
    repo: Path,
) -> None:
    attempts: list[str] = []

    def refuse(name: str, key: str, size: int) -> None:
        attempts.append(name)
        raise InferenceServerException("Unable to open shared memory region", status="INTERNAL")

    config = model_config_pb2.ModelConfig(name=MODEL, max_batch_size=8)
    config.output.add(name="y", data_type=model_config_pb2.TYPE_FP32, dims=[4])
    router, clients = make_router(repo, ["localhost:1"], config=config, shared_memory=True)
    clients[0].register_system_shared_memory = refuse  # type: ignore[attr-defined]
    clients[0].unregister_system_shared_memory = lambda name: None  # type: ignore[attr-defined]
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with router:
        for _ in range(3):
            router.infer([tensor], key="k")
    assert len(attempts) == 1 and len(clients[0].calls) == 3
