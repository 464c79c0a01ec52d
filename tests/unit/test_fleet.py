"""TritonFleet: a call reaches every server even when one fails, and names every failure."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from tritonclient.grpc.model_config_pb2 import ModelConfig

from repo_manager.errors import TritonError, TritonUnavailableError
from repo_manager.triton import TritonFleet, VersionState


class FakeServer:
    """Pure bookkeeping of what a server was asked (no Triton behaviour claimed)."""

    def __init__(self, url: str, *, down: bool = False, refuse: bool = False) -> None:
        self.url, self.down, self.refuse = url, down, refuse
        self.loaded: list[list[str]] = []

    def check_reachable(self) -> None:
        if self.down:
            raise TritonUnavailableError(f"Triton unreachable at {self.url}")

    def load(
        self, model: str, config: ModelConfig, versions: Sequence[str], *, timeout: float
    ) -> None:
        self.check_reachable()
        if self.refuse:
            raise TritonError(f"Triton at {self.url} refused to load {model}")
        self.loaded.append(list(versions))

    def wait_versions(self, model: str, **_: object) -> None:
        return None

    def index(self) -> dict[str, object]:
        self.check_reachable()
        return {}

    def versions(self, model: str, *, index: object = None) -> tuple[VersionState, ...]:
        self.check_reachable()
        latest = self.loaded[-1] if self.loaded else []
        return tuple(VersionState(version=v, state="READY") for v in latest)

    def close(self) -> None:
        return None


def fleet(*servers: FakeServer) -> TritonFleet:
    made = TritonFleet(["127.0.0.1:1"])
    made.close()
    made.servers = list(servers)  # type: ignore[list-item]
    return made


def test_one_refusal_still_loads_the_others_and_is_raised() -> None:
    a, b, c = FakeServer("a:1"), FakeServer("b:1", refuse=True), FakeServer("c:1")
    with pytest.raises(TritonError, match="b:1 refused"):
        fleet(a, b, c).apply("m", ModelConfig(name="m"), ["1", "2"], timeout=1)
    # A rollback is an apply of the previous versions: it must reach a and c too.
    assert a.loaded == [["1", "2"]] and c.loaded == [["1", "2"]]


def test_several_failures_are_named_in_one_error() -> None:
    servers = (FakeServer("a:1", down=True), FakeServer("b:1"), FakeServer("c:1", down=True))
    with pytest.raises(TritonUnavailableError, match=r"2 of 3 servers failed.*a:1.*c:1"):
        fleet(*servers).apply("m", ModelConfig(name="m"), ["1"], timeout=1)
    assert servers[1].loaded == [["1"]]


def test_only_limits_the_call_to_the_named_servers() -> None:
    a, b = FakeServer("a:1"), FakeServer("b:1")
    fleet(a, b).apply("m", ModelConfig(name="m"), ["1"], timeout=1, only=["b:1"])
    assert a.loaded == [] and b.loaded == [["1"]]


def test_check_reachable_names_every_down_server() -> None:
    servers = (FakeServer("a:1", down=True), FakeServer("b:1"), FakeServer("c:1", down=True))
    with pytest.raises(TritonUnavailableError, match=r"a:1, c:1 \(2 of 3 servers\)"):
        fleet(*servers).check_reachable()


def test_survey_reports_a_down_server_instead_of_raising() -> None:
    up, down = FakeServer("a:1"), FakeServer("b:1", down=True)
    up.loaded.append(["1"])
    report = fleet(up, down).survey("m")
    assert report[0].ready == frozenset({"1"}) and report[0].error is None
    assert report[1].error is not None and "unreachable" in report[1].error
