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
