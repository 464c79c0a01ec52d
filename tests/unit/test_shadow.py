"""Shadow traffic without a server: only stable's requests are mirrored, to the canary,
in the background, and a full queue drops mirrors instead of slowing users."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from repo_manager import Router
from repo_manager.errors import InvalidInputError
from repo_manager.metrics import RouterMetrics
from repo_manager.yolo import match_count
from tests.unit.routing_fakes import FakeClient, write_state

MODEL = "det"


class BlockingClient(FakeClient):
    """Canary requests wait until ``release`` is set (a stuck canary)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.release = threading.Event()

    def infer(self, model_name: str, inputs: Any, model_version: str = "", **kw: Any) -> Any:
        if model_version == "2":
            self.release.wait(10)
        return super().infer(model_name, inputs, model_version, **kw)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_every_stable_request_is_mirrored_to_a_canary_without_weight(tmp_path: Path) -> None:
    write_state(tmp_path, {"1": 100, "2": 0}, 1)
    clients: list[FakeClient] = []

    def factory(url: str) -> FakeClient:
        clients.append(FakeClient(url))
        return clients[-1]

    metrics = RouterMetrics()
    with Router(
        MODEL,
        url="a:1",
        repository=tmp_path,
        client_factory=factory,
        shadow=1.0,
        metrics=metrics,
    ) as r:
        served = {r.infer([]).version for _ in range(20)}
        wait_for(lambda: clients[0].calls.count("2") == 20)
    assert served == {"1"}  # users never got the canary
    assert metrics.shadow(MODEL, "2").snapshot()["ok"] == 20


def test_a_failing_shadow_is_counted_and_never_reaches_the_user(tmp_path: Path) -> None:
    write_state(tmp_path, {"1": 100, "2": 0}, 1)
    client = FakeClient("a:1")
    client.fail["2"] = InferenceServerException("canary bug", status="StatusCode.INTERNAL")
    metrics = RouterMetrics()
    with Router(
        MODEL, url="a:1", repository=tmp_path, client_factory=lambda u: client, metrics=metrics
    ) as r:
        r.set_shadow(1.0)
        for _ in range(5):
            assert r.infer([]).version == "1"
        wait_for(lambda: metrics.shadow(MODEL, "2").snapshot()["error"] == 5)


def test_a_full_shadow_queue_drops_mirrors_instead_of_waiting(tmp_path: Path) -> None:
    write_state(tmp_path, {"1": 100, "2": 0}, 1)
    client = BlockingClient("a:1")
    metrics = RouterMetrics()
    with Router(
        MODEL,
        url="a:1",
        repository=tmp_path,
        client_factory=lambda u: client,
        shadow=1.0,
        shadow_queue=2,
        metrics=metrics,
    ) as r:
        started = time.monotonic()
        for _ in range(10):
            r.infer([])
        assert time.monotonic() - started < 2.0
        dropped = metrics.shadow(MODEL, "2").snapshot()["dropped"]
        client.release.set()
    assert dropped >= 7  # one in flight, two queued


def test_shadow_share_must_be_a_fraction(tmp_path: Path) -> None:
    write_state(tmp_path, {"1": 100, "2": 0}, 1)
    with (
        Router(MODEL, url="a:1", repository=tmp_path, client_factory=FakeClient) as r,
        pytest.raises(InvalidInputError),
    ):
        r.set_shadow(20)


def test_match_count_pairs_same_class_boxes_one_to_one() -> None:
    reference = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0, 1]))
    other = (
        np.array([[0, 0, 10, 11], [1, 0, 10, 10], [20, 20, 30, 30]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([0, 0, 0]),  # the third has the wrong class
    )
    assert match_count(reference, other) == 1
