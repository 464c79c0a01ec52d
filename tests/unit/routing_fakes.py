"""Helpers for the Router's unit tests: a stand-in for tritonclient's gRPC client and a
writer of the manager's state; what Triton itself does is proven in
tests/integration/test_router_live.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from repo_manager import Router
from repo_manager.metrics import RouterMetrics
from repo_manager.phases import Phase
from repo_manager.state import RolloutState, RoutingTable, state_key
from repo_manager.storage import LocalStorage

MODEL = "det"
UNREACHABLE = "failed to connect to all addresses; last error: Connection refused"
LATE = "Deadline Exceeded"


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
    LocalStorage(repo).write_bytes_atomic(state_key(state.model), state.to_json())


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
        #: Takes every call and answers none within its deadline (a stopped server).
        self.hung = False
        self.calls: list[str] = []
        self.outputs: dict[str, np.ndarray] = {}
        self.config = config
        self.closed = False

    def infer(self, model_name: str, inputs: Any, model_version: str = "", **kw: Any) -> Any:
        assert model_version, "the Router must always pin a version"
        if self.down:
            raise InferenceServerException(UNREACHABLE, status="StatusCode.UNAVAILABLE")
        self.calls.append(model_version)
        if self.hung:
            raise InferenceServerException(LATE, status="StatusCode.DEADLINE_EXCEEDED")
        if model_version in self.fail:
            raise self.fail[model_version]
        return FakeResult(model_version, self.outputs)

    def is_server_live(self, **_: Any) -> bool:
        if self.down:
            raise InferenceServerException(UNREACHABLE, status="StatusCode.UNAVAILABLE")
        if self.hung:
            raise InferenceServerException(LATE, status="StatusCode.DEADLINE_EXCEEDED")
        return True

    def get_model_config(self, model_name: str) -> Any:
        return service_pb2.ModelConfigResponse(config=self.config)

    def close(self) -> None:
        self.closed = True


def make_router(repo: Path, urls: list[str] | None = None, **kw: Any) -> tuple[Router, list[Any]]:
    clients: list[FakeClient] = []
    config = kw.pop("config", None)

    def factory(url: str) -> FakeClient:
        clients.append(FakeClient(url, config=config))
        return clients[-1]

    # Each Router counts into its own registry: tests share no metrics.
    kw.setdefault("metrics", RouterMetrics(CollectorRegistry()))
    router = Router(MODEL, ["a:1"] if urls is None else urls, repo, client_factory=factory, **kw)
    return router, clients
