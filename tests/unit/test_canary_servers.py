"""A canary limited to some servers: the name matcher, the per-server desired versions and
public names, the order of server moves, and the Router's per-version server choice.

Pure bookkeeping with fake servers (what Triton does is proven in
tests/integration/test_canary_servers.py against real tritonservers).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import InferenceServerException

from repo_manager.errors import InvalidGateError, InvalidInputError
from repo_manager.history.plot_data import plot_data
from repo_manager.modelconfig import parse_config
from repo_manager.names import CONFIG_FILE, versions_model_name
from repo_manager.phases import Phase
from repo_manager.repository import ModelRepository
from repo_manager.rollout import RolloutManager, RolloutSettings
from repo_manager.rollout.applier import table_at
from repo_manager.rollout.settings import AnalysisPlan, parse_step_plan, parse_waves
from repo_manager.rollout.status import status_document
from repo_manager.server_selection import parse_names, select_servers
from repo_manager.state import RolloutState, Transition, load_state, state_key
from repo_manager.storage import LocalStorage
from repo_manager.triton import ServerVersions, TritonFleet, VersionState
from repo_manager.triton.fleet import for_server
from repo_manager.unpinned import public_route
from tests.unit.published import write_published
from tests.unit.routing_fakes import MODEL, make_router

FLEET = ["10.0.0.1:8001", "10.0.0.2:8001", "triton-0:8001", "triton-1:8001"]


def resolver(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
    """``zone-a`` resolves to the first two addresses (a headless Service)."""
    if host != "zone-a":
        raise socket.gaierror(f"unknown host {host}")
    return [(0, 0, 0, "", (a, port)) for a in ("10.0.0.1", "10.0.0.2")]


# ---- the name matcher -------------------------------------------------------------------


def test_names_match_host_port_host_a_dns_label_and_all() -> None:
    def pick(servers: list[str] | None, exclude: list[str] | None = None) -> Any:
        return select_servers(FLEET, servers, exclude, resolver=resolver)

    assert pick(["triton-1:8001"]) == ("triton-1:8001",)
    assert pick(["triton-1"]) == ("triton-1:8001",)
    assert pick(["dns://zone-a:8001"]) == ("10.0.0.1:8001", "10.0.0.2:8001")
    # Fleet order, whatever the order given; the whole fleet is no limit at all.
    assert pick(["triton-1", "10.0.0.2:8001"]) == ("10.0.0.2:8001", "triton-1:8001")
    assert pick(["all"]) is None and pick(None) is None
    assert pick(None, ["dns://zone-a:8001"]) == ("triton-0:8001", "triton-1:8001")
    assert pick(["all"], ["triton-0", "triton-1"]) == ("10.0.0.1:8001", "10.0.0.2:8001")


def test_a_name_no_server_has_or_leaving_no_server_is_refused_in_one_line() -> None:
    with pytest.raises(InvalidInputError, match=r"--servers triton-9: no server of the fleet"):
        select_servers(FLEET, ["triton-0", "triton-9"], None)
    with pytest.raises(InvalidInputError, match=r"--exclude all: no server"):
        select_servers(FLEET, None, ["all"])
    with pytest.raises(InvalidInputError, match="leave the canary no server"):
        select_servers(FLEET, ["triton-0"], ["triton-0:8001"])
    with pytest.raises(InvalidInputError, match="needs at least one server name"):
        parse_names(" , ", "--servers")
    assert parse_names("triton-0, triton-1", "--servers") == ["triton-0", "triton-1"]


# ---- the manager on a fleet of fake servers ---------------------------------------------


def limit_canary(
    repo: Path, servers: tuple[str, ...], weights: dict[str, int], *, unpinned: str = "stable"
) -> None:
    """Canary 2 beside stable 1 at ``weights``, only on ``servers``."""
    state = RolloutState(
        model=MODEL,
        phase=Phase.PROGRESSING,
        stable="1",
        canary="2",
        weights=weights,
        generation=5,
        servers=servers,
        unpinned=unpinned,
    )
    LocalStorage(repo).write_bytes_atomic(state_key(MODEL), state.to_json())


class FakeServer:
    """What a server was asked, and what it holds as a result (no Triton behaviour
    claimed beyond "a load of exactly these versions leaves exactly these loaded")."""

    def __init__(self, url: str, log: list[tuple[Any, ...]], storage: LocalStorage) -> None:
        self.url, self.log, self.storage = url, log, storage
        self.held: list[str] = []
        self.public: str | None = None

    def check_reachable(self) -> None:
        return None

    def server_metadata(self) -> dict[str, str]:
        return {"version": "2.51.0"}

    def _weights(self) -> dict[str, int]:
        state = load_state(self.storage, MODEL)
        return dict(state.weights) if state else {}

    def load(self, model: str, config: ModelConfig, versions: Sequence[str], **_: Any) -> None:
        self.held = list(versions)
        self.log.append(("load", self.url, list(versions), self._weights()))

    def wait_versions(self, model: str, **_: Any) -> None:
        return None

    def public_route(self, name: str, *, index: object = None) -> str | None:
        return self.public

    def load_public(self, name: str, config: ModelConfig, **_: Any) -> None:
        self.public = public_route(config)
        self.log.append(("public", self.url, self.public, self._weights()))

    def index(self) -> dict[str, object]:
        return {}

    def versions(self, model: str, *, index: object = None) -> tuple[VersionState, ...]:
        return tuple(VersionState(version=v, state="READY") for v in self.held)

    def close(self) -> None:
        return None


class Harness:
    def __init__(self, root: Path, unpinned: str = "stable") -> None:
        self.root = root
        self.storage = LocalStorage(root)
        write_published(root, MODEL, ["1", "2"])
        limit_canary(root, ("b:1",), {"1": 90, "2": 10}, unpinned=unpinned)
        self.log: list[tuple[Any, ...]] = []
        self.fleet = TritonFleet(["127.0.0.1:1"])
        self.fleet.close()
        self.servers = [FakeServer(u, self.log, self.storage) for u in ("a:1", "b:1")]
        self.fleet.servers = self.servers  # type: ignore[assignment]
        self.manager = RolloutManager(
            ModelRepository(self.storage), self.fleet, settings=RolloutSettings(drain_seconds=0)
        )

    def state(self) -> RolloutState:
        state = load_state(self.storage, MODEL)
        assert state is not None
        return state

    def on_disk_versions(self) -> list[str]:
        path = self.root / versions_model_name(MODEL) / CONFIG_FILE
        config = parse_config(path.read_bytes(), source=str(path))
        return [str(v) for v in config.version_policy.specific.versions]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_only_the_canarys_servers_hold_it_and_the_on_disk_policy_never_names_it(
    harness: Harness,
) -> None:
    state = harness.state()
    applier = harness.manager.applier
    assert applier.desired_versions(state, "a:1") == ["1"]
    assert applier.desired_versions(state, "b:1") == ["1", "2"]
    # Even a version policy that keeps every version keeps the canary off server a.
    kept_all = RolloutState(**{**vars(state), "policy": {"all": True}})
    assert applier.desired_versions(kept_all, "a:1") == ["1"]
    applier.apply(state)
    assert [s.held for s in harness.servers] == [["1"], ["1", "2"]]
    assert harness.on_disk_versions() == ["1"]  # what a restarted server loads: not the canary


def test_the_weighted_public_name_outside_the_canarys_servers_sends_all_to_stable(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path, unpinned="weighted")
    state = harness.state()
    harness.manager.applier.apply(state)
    assert [s.public for s in harness.servers] == ["weighted 1:100", "weighted 1:90,2:10"]
    on_disk = (tmp_path / MODEL / CONFIG_FILE).read_bytes()
    routing = json.loads(parse_config(on_disk, source="public").parameters["routing"].string_value)
    assert routing["canary"] is None and routing["weights"] == {"1": 100}
    assert table_at(state, "b:1") == state.routing_table()


def test_a_server_outside_the_canarys_servers_gets_no_cohort_either(tmp_path: Path) -> None:
    state = Harness(tmp_path).state()
    with_cohort = RolloutState(**{**vars(state), "cohort": {"rule": "line=3", "weight": 100}})
    outside, inside = table_at(with_cohort, "a:1"), table_at(with_cohort, "b:1")
    assert (outside.canary, outside.cohort) == (None, None)
    assert inside.cohort == {"rule": "line=3", "weight": 100}


def test_widening_loads_the_canary_before_the_table_sends_it_there_narrowing_after(
    harness: Harness,
) -> None:
    harness.manager.applier.apply(harness.state())
    harness.log.clear()
    widened = harness.manager.set_weight(MODEL, 25, servers=None)
    assert widened.servers is None and widened.history[-1].servers is None
    # Loaded on a while the table still held 10% only on b; then the table moved.
    assert harness.log == [
        ("load", "a:1", ["1", "2"], {"1": 90, "2": 10}),
        ("load", "b:1", ["1", "2"], {"1": 90, "2": 10}),
    ]
    harness.log.clear()
    narrowed = harness.manager.set_weight(MODEL, 25, servers=("b:1",))
    assert narrowed.history[-1].servers == ["b:1"]
    assert ("load", "a:1", ["1"], {"1": 75, "2": 25}) in harness.log  # after the table
    assert harness.on_disk_versions() == ["1"]


def test_promote_loads_the_new_stable_everywhere_before_traffic_and_clears_the_limit(
    harness: Harness,
) -> None:
    harness.manager.applier.apply(harness.state())
    harness.log.clear()
    done = harness.manager.promote(MODEL)
    loads = [entry for entry in harness.log if entry[0] == "load"]
    # First: 2 beside 1 on every server while the table is unchanged (2 only on b).
    assert loads[:2] == [
        ("load", "a:1", ["1", "2"], {"1": 90, "2": 10}),
        ("load", "b:1", ["1", "2"], {"1": 90, "2": 10}),
    ]
    # The old stable is unloaded only once 2 took all traffic, everywhere.
    assert loads[-2:] == [("load", "a:1", ["2"], {"2": 100}), ("load", "b:1", ["2"], {"2": 100})]
    assert done.servers is None and done.stable == "2"
    assert [t.servers for t in done.history[-2:]] == [None, None]


def test_rollback_never_loads_the_canary_elsewhere_and_unloads_it_where_it_is(
    harness: Harness,
) -> None:
    harness.manager.applier.apply(harness.state())
    harness.log.clear()
    done = harness.manager.rollback(MODEL)
    assert not [e for e in harness.log if e[0] == "load" and e[1] == "a:1" and "2" in e[2]]
    assert [s.held for s in harness.servers] == [["1"], ["1"]]
    assert done.servers is None
    assert [t.servers for t in done.history[-2:]] == [["b:1"], None]


# ---- the Router -------------------------------------------------------------------------


def test_the_router_sends_the_canary_only_to_its_servers_and_stable_anywhere(
    repo: Path,
) -> None:
    limit_canary(repo, ("b:1",), {"1": 50, "2": 50})
    router, (a, b, c) = make_router(repo, ["a:1", "b:1", "c:1"])
    with router:
        results = [router.infer([]) for _ in range(300)]
    assert "2" not in a.calls and "2" not in c.calls and b.calls.count("2") > 100
    assert {r.url for r in results if r.version == "2"} == {"b:1"}
    assert {r.url for r in results if r.version == "1"} == {"a:1", "b:1", "c:1"}


def test_a_failed_canary_falls_back_to_stable_and_a_router_without_its_servers_uses_stable(
    repo: Path,
) -> None:
    limit_canary(repo, ("b:1",), {"1": 0, "2": 100})
    router, (a, b) = make_router(repo, ["a:1", "b:1"])
    b.fail["2"] = InferenceServerException("broken", status="StatusCode.INTERNAL")
    with router:
        result = router.infer([])
    # Stable answers on the other server (the failure may be the server's).
    assert (result.version, result.fallback, result.url) == ("1", True, "a:1")
    assert (a.calls, b.calls) == (["1"], ["2"])
    other, (c,) = make_router(repo, ["c:1"])
    with other:
        assert [other.infer([]).version for _ in range(5)] == ["1"] * 5
    assert c.calls == ["1"] * 5


# ---- waves ------------------------------------------------------------------------------


def test_waves_parse_into_steps_and_each_steps_server_names() -> None:
    weights, waves = parse_waves("servers=triton-1:8001:10,25; servers=all:25,pause,50,100")
    assert weights == "10,25,25,pause,50,100"
    assert waves == (("triton-1:8001",),) * 2 + (("all",),) * 3
    assert parse_waves("10,25,50,100") == ("10,25,50,100", ())
    steps, _ = parse_step_plan(weights)
    plan = AnalysisPlan(steps=steps, servers=waves)
    assert AnalysisPlan.from_dict(plan.to_dict()) == plan
    assert plan.servers_at(1) == ("triton-1:8001",) and plan.servers_at(5) is None
    with pytest.raises(InvalidGateError, match="steps must increase"):
        AnalysisPlan(steps=(10, 25, 25), servers=(("a",), ("a",), ("a",)))
    with pytest.raises(InvalidGateError, match="a wave is servers="):
        parse_waves("servers=:10,25")


def test_an_analysis_starts_on_its_first_waves_servers_loaded_there_first(
    harness: Harness,
) -> None:
    harness.manager.applier.apply(harness.state())
    harness.log.clear()
    plan = AnalysisPlan(steps=(10, 50), servers=(("all",), ("all",)))
    with pytest.raises(InvalidInputError, match="no server of the fleet is c"):
        harness.manager.start_analysis(MODEL, AnalysisPlan(steps=(10,), servers=(("c",),)))
    started = harness.manager.start_analysis(MODEL, plan)
    assert started.servers is None and started.phase is Phase.ANALYZING
    assert harness.log[0] == ("load", "a:1", ["1", "2"], {"1": 90, "2": 10})


def test_the_plot_labels_each_move_of_the_canarys_servers() -> None:
    def entry(minute: int, action: str, servers: list[str] | None) -> Transition:
        return Transition(
            at=f"2026-12-07T20:{minute:02d}:00.000+00:00",
            action=action,
            from_phase="progressing",
            to_phase="progressing",
            stable="1",
            canary="2",
            weights={"1": 90, "2": 10},
            servers=servers,
        )

    entries = [
        entry(0, "publish canary at 10%", ["b:1"]),
        entry(1, "set-weight 10%", ["b:1"]),
        entry(2, "set-weight 25%", None),
    ]
    assert plot_data(entries).actions == [
        "publish canary at 10% (canary on b:1)",
        "set-weight 10%",
        "set-weight 25% (canary on every server)",
    ]


def test_status_reads_a_limited_canary_from_its_servers_and_names_them(harness: Harness) -> None:
    state = harness.state()
    survey = [
        ServerVersions(url="a:1", versions=(VersionState(version="1", state="READY"),)),
        ServerVersions(
            url="b:1",
            versions=tuple(VersionState(version=v, state="READY") for v in ("1", "2")),
        ),
    ]
    document = status_document(state, survey, ["1", "2"])
    assert document["versions"] == [
        {"version": "1", "state": "READY"},
        {"version": "2", "state": "READY"},
    ]
    assert document["canary_servers"] == ["b:1"]


def test_a_server_missing_from_a_per_server_list_holds_only_what_every_server_holds() -> None:
    per_server = {"a:1": ["1"], "b:1": ["1", "2"]}
    assert for_server(per_server, "b:1") == ["1", "2"]
    assert for_server(per_server, "c:1") == ["1"]
    assert for_server(["1", "2"], "c:1") == ["1", "2"]
