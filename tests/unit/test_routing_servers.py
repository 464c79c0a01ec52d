"""The server pool, mostly through a Router with fake clients: round robin, failover, shm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from repo_manager import TritonUnavailableError
from repo_manager.routing.servers import ServerPool
from repo_manager.shm import SharedMemoryChannel
from tests.unit.routing_fakes import MODEL, FakeClient, make_router


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
    clients[0].unregister_system_shared_memory = lambda name, **kw: None  # type: ignore[attr-defined]
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with router:
        for _ in range(3):
            router.infer([tensor], key="k")
    assert len(attempts) == 1 and len(clients[0].calls) == 3


def test_shared_memory_is_passed_in_and_only_for_a_single_fixed_server() -> None:
    client = FakeClient("localhost:1")
    channel = SharedMemoryChannel(client, "det-versions")
    for clients, addresses in (
        ([("a:1", client), ("b:1", client)], ()),
        ([("a:1", client)], ("dns://t:1",)),
    ):
        with pytest.raises(ValueError, match="single fixed server"):
            ServerPool(
                MODEL,
                "det-versions",
                clients,
                factory=FakeClient,
                timeout=None,
                retry_after=1.0,
                channel=channel,
                addresses=addresses,
            )


def test_a_hung_server_leaves_the_rotation_and_is_probed_back_in(repo: Path) -> None:
    """A server that takes requests and answers none costs one request its deadline, then
    gets none until a liveness probe answers again."""
    from tests.eventually import eventually

    router, clients = make_router(repo, ["a:1", "b:1"])
    router._servers._probe_interval = 0.02
    clients[0].hung = True
    with router:
        results = [router.infer([]) for _ in range(20)]
        assert all(not r.fallback for r in results)
        assert len(clients[0].calls) == 1 and len(clients[1].calls) == 20
        assert router.hung_servers == ["a:1"]
        clients[0].hung = False
        assert eventually(lambda: router.hung_servers == [], 5)
        for _ in range(20):
            router.infer([])
    assert len(clients[0].calls) == 11  # back in the round robin


def test_a_failed_canary_falls_back_to_stable_on_another_server(repo: Path) -> None:
    from tests.unit.routing_fakes import write_state

    write_state(repo, {"1": 0, "2": 100}, generation=1)
    router, clients = make_router(repo, ["a:1", "b:1"])
    broken = InferenceServerException("canary crashed", status="StatusCode.INTERNAL")
    for client in clients:
        client.fail["2"] = broken
    with router:
        for _ in range(10):
            result = router.infer([])
            assert result.version == "1" and result.fallback
            first = next(c for c in clients if c.calls and c.calls[-1] == "2")
            other = next(c for c in clients if c is not first)
            assert other.calls[-1] == "1"  # stable, on the server that did not fail
            for client in clients:
                client.calls.clear()


def test_when_every_server_is_late_the_other_version_is_tried(repo: Path) -> None:
    from tests.unit.routing_fakes import write_state

    write_state(repo, {"1": 0, "2": 100}, generation=1)
    router, clients = make_router(repo, ["a:1", "b:1"])
    late = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    for client in clients:
        client.fail["2"] = late  # a slow canary: the servers answer probes
    with router:
        result = router.infer([])
    assert (result.version, result.fallback) == ("1", True)
