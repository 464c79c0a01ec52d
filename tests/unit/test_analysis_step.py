"""The analysis step, one ``advance()`` call at a time (like Flagger's scheduler tests):
phase, weight and failed-check count after each call. Pure logic: a recording fleet and a
scripted metrics provider; the live figures themselves are tested against real servers."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from repo_manager.analysis import Outcome, Snapshot
from repo_manager.errors import IllegalTransitionError, MetricsUnavailableError
from repo_manager.gates import LiveGates
from repo_manager.metrics import ManagerMetrics
from repo_manager.phases import Phase
from repo_manager.rollout import AnalysisPlan, AnalysisStatus, RolloutManager
from repo_manager.rollout.analysis_step import Then, decide
from repo_manager.state import RolloutState, load_state
from tests.unit.published import write_published
from tests.unit.test_rollout_ordering import Harness, RecordingFleet
from tests.unit.test_rollout_ordering import manager as manager


class ScriptedProvider:
    """Cumulative Triton counters that grow by one scripted interval per call."""

    name = "scripted"

    def __init__(self) -> None:
        self.totals: Snapshot = {
            "triton_success": {},
            "triton_failure": {},
            "triton_duration_us": {},
        }
        self.next: list[str] = []

    def _add(self, key: str, version: str, value: float) -> None:
        per = self.totals[key]
        per[version] = per.get(version, 0.0) + value

    def interval(self, kind: str) -> None:
        """Queue what the next interval looks like: healthy, slow, failing, idle, down."""
        self.next.append(kind)

    def snapshot(self, model: str) -> Snapshot:
        kind = self.next.pop(0) if self.next else "healthy"
        if kind == "down":
            raise MetricsUnavailableError("metrics source http://127.0.0.1:9/metrics unreachable")
        if kind != "idle":
            canary_failures = 20.0 if kind == "failing" else 0.0
            canary_ms = 30.0 if kind == "slow" else 10.0
            self._add("triton_success", "1", 100)
            self._add("triton_duration_us", "1", 100 * 10_000)
            self._add("triton_success", "2", 100 - canary_failures)
            self._add("triton_failure", "2", canary_failures)
            self._add("triton_duration_us", "2", 100 * canary_ms * 1000)
        return {k: dict(v) for k, v in self.totals.items()}


def observe(rollout: RolloutManager) -> tuple[Phase, int, int]:
    state = rollout.state("m")
    assert state is not None
    weight = state.weights.get("2", 0) if state.canary else 0
    failed = int((state.analysis or {}).get("failed_checks", 0))
    return state.phase, weight, failed


PLAN = AnalysisPlan(steps=(10, 25, 50, 100), threshold=2, max_metrics_errors=3)


def test_healthy_canary_walks_every_step_then_is_promoted(manager: Harness) -> None:
    rollout, fleet, _ = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    assert observe(rollout) == (Phase.ANALYZING, 10, 0)
    rollout.advance("m", provider)  # baseline
    assert observe(rollout) == (Phase.ANALYZING, 10, 0)
    rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 25, 0)
    rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 50, 0)
    rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 100, 0)
    assert fleet.calls == []  # weights only, no Triton call until the promotion
    final = rollout.advance("m", provider)
    assert final.phase is Phase.SUCCEEDED and final.stable == "2" and final.canary is None
    assert fleet.calls == [
        (["1", "2"], [], {"2": 100}),
        ("public", "2", {"2": 100}),
        (["2"], ["1"], {"2": 100}),
    ]
    # Idempotent once the analysis is over: another call changes nothing.
    assert rollout.advance("m", provider).generation == final.generation
    actions = [t.action for t in final.history]
    assert "analysis: passed the last step at 100%" in actions
    assert final.history[-2].reason == "analysis passed every step"


@pytest.mark.parametrize("kind", ["slow", "failing"])
def test_bad_canary_is_rolled_back_at_the_threshold(manager: Harness, kind: str) -> None:
    rollout, fleet, _ = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)  # baseline
    rollout.advance("m", provider)  # healthy
    assert observe(rollout) == (Phase.ANALYZING, 25, 0)
    provider.interval(kind)
    rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 25, 1)  # failed check: weight holds
    provider.interval(kind)
    final = rollout.advance("m", provider)
    assert final.phase is Phase.ROLLED_BACK and final.stable == "1"
    assert fleet.calls == [(["1", "2"], [], {"1": 100}), (["1"], ["2"], {"1": 100})]
    rollback = next(t for t in final.history if t.action == "rollback")
    gate = "max_latency_ratio[triton]" if kind == "slow" else "max_error_rate[triton]"
    assert "2 failed checks (threshold 2)" in rollback.reason and gate in rollback.reason


def test_an_interval_without_canary_traffic_neither_advances_nor_fails(
    manager: Harness,
) -> None:
    rollout, _, _ = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)
    provider.interval("idle")
    state = rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 10, 0)
    assert state.history[-1].action == "analysis: no verdict at 10%"


def test_unreachable_metrics_never_fail_the_canary_and_have_their_own_limit(
    manager: Harness,
) -> None:
    rollout, fleet, _ = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)  # baseline
    provider.interval("down")
    provider.interval("down")
    rollout.advance("m", provider)
    rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 10, 0)
    state = rollout.state("m")
    assert state is not None and state.analysis is not None
    assert state.analysis["metrics_errors"] == 2
    # Back before the limit: the counter resets and the healthy canary moves on.
    rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 25, 0)
    for _ in range(2):
        provider.interval("down")
        rollout.advance("m", provider)
    provider.interval("down")
    with pytest.raises(MetricsUnavailableError, match="limit 3"):
        rollout.advance("m", provider)
    assert observe(rollout) == (Phase.ANALYZING, 25, 0)  # never rolled back
    assert fleet.calls == []


def test_advance_continues_from_persisted_counters_in_a_new_manager(
    manager: Harness,
) -> None:
    rollout, fleet, storage = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)
    provider.interval("failing")
    rollout.advance("m", provider)
    other = RolloutManager(rollout.repository, fleet, settings=rollout.settings)  # type: ignore[arg-type]
    provider.interval("failing")
    final = other.advance("m", provider)
    assert final.phase is Phase.ROLLED_BACK
    persisted = load_state(storage, "m")
    assert persisted is not None and persisted.analysis is not None
    assert persisted.analysis["failed_checks"] == 2


def test_state_is_exposed_as_prometheus_gauges(manager: Harness) -> None:
    plain, fleet, _ = manager
    registry = CollectorRegistry()
    rollout = RolloutManager(
        plain.repository,
        fleet,  # type: ignore[arg-type]
        settings=plain.settings,
        metrics=ManagerMetrics(registry),
    )
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)
    provider.interval("slow")
    rollout.advance("m", provider)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": "m", **labels})

    assert sample("repo_manager_canary_weight") == 10
    assert sample("repo_manager_rollout_phase", phase="analyzing") == 1
    assert sample("repo_manager_rollout_phase", phase="progressing") == 0
    assert sample("repo_manager_analysis_failed_checks") == 1
    assert sample("repo_manager_gate_value", gate="max_latency_ratio[triton]") == pytest.approx(3.0)
    assert sample("repo_manager_gate_passed", gate="max_latency_ratio[triton]") == 0


def test_a_person_setting_the_weight_takes_over_from_the_analysis(
    manager: Harness,
) -> None:
    rollout, _, _ = manager
    rollout.start_analysis("m", PLAN)
    state = rollout.set_weight("m", 40)
    assert state.phase is Phase.PROGRESSING and state.analysis is None
    assert rollout.advance("m", ScriptedProvider()).generation == state.generation


def test_analysis_needs_a_canary(tmp_path: Path) -> None:
    from repo_manager.repository import ModelRepository
    from repo_manager.state import state_key
    from repo_manager.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    write_published(tmp_path, "m", ["1"])
    state = RolloutState(model="m", phase=Phase.INITIALIZED, stable="1", weights={"1": 100})
    storage.write_bytes_atomic(state_key("m"), state.to_json())
    rollout = RolloutManager(ModelRepository(storage), RecordingFleet(storage, "m"))  # type: ignore[arg-type]
    with pytest.raises(IllegalTransitionError):
        rollout.start_analysis("m", AnalysisPlan(gates=LiveGates()))


def test_a_step_is_decided_from_the_status_alone() -> None:
    provider = ScriptedProvider()
    baseline = provider.snapshot("m")
    provider.interval("failing")
    reading = provider.snapshot("m")
    status = AnalysisStatus(plan=PLAN, snapshot=baseline)
    first = decide(status, reading, stable="1", canary="2", weight=10, at=0.0)
    assert first.then is Then.STAY and first.weight == 10
    assert first.status.failed_checks == 1 and first.status.snapshot == reading
    assert first.status.last is not None and first.status.last.outcome is Outcome.FAIL
    assert status.failed_checks == 0  # a new status; the old one is unchanged
    second = decide(first.status, reading, stable="1", canary="2", weight=10, at=1.0)
    assert second.status.last is not None and second.status.last.outcome is Outcome.NO_DATA
    last = decide(
        replace(first.status, snapshot=baseline),
        reading,
        stable="1",
        canary="2",
        weight=10,
        at=2.0,
    )
    assert last.then is Then.ROLL_BACK and "2 failed checks (threshold 2)" in last.why
    down = decide(
        replace(status, metrics_errors=2),
        MetricsUnavailableError("down"),
        stable="1",
        canary="2",
        weight=10,
        at=3.0,
    )
    assert down.then is Then.STOP and down.status.snapshot == baseline and "limit 3" in down.why


def test_an_analysis_persisted_before_the_typed_status_loads_unchanged() -> None:
    document = {
        "plan": {
            "steps": [10, 50],
            "threshold": 2,
            "max_metrics_errors": 5,
            "gates": {
                "max_error_rate": 0.01,
                "max_latency_ratio": 1.5,
                "min_requests": 10,
                "min_agreement": 0.8,
            },
        },
        "step": 1,
        "failed_checks": 1,
        "metrics_errors": 0,
        "snapshot": {"triton_success": {"1": 100.0, "2": 12.0}},
        "last": {
            "outcome": "fail",
            "reason": "error_rate[triton]=0.2 (bound 0.01) FAILED",
            "gates": [
                {
                    "name": "error_rate[triton]",
                    "value": 0.2,
                    "bound": 0.01,
                    "passed": False,
                    "detail": "",
                }
            ],
        },
    }
    status = AnalysisStatus.from_json(document)
    assert status.plan.steps == (10, 50) and status.last is not None
    assert status.last.outcome is Outcome.FAIL and not status.last.gates[0].passed
    # Gates added since take their defaults; everything the document held is kept.
    written = status.to_json()
    assert written["plan"]["gates"] == {**asdict(LiveGates()), **document["plan"]["gates"]}
    written["plan"]["gates"] = document["plan"]["gates"]
    # Driven by its rollout, at the default interval (the manager takes over after three).
    assert written["plan"].pop("interval_s") == 30.0 and written["plan"].pop("detached") is False
    assert written["plan"].pop("approve_before") == []
    assert written == document
    assert "snapshot" not in status.to_json(snapshot=False)
