"""The memory gates: a share held above the bound for the whole window, the growth of a
server's resident memory since the first reading, read from real exposition text and
/proc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from repo_manager.analysis import ScrapeProvider, judge
from repo_manager.gates import LiveGates
from repo_manager.metrics.resident import tree_resident_bytes
from repo_manager.resource_gates import (
    BASELINE_KEY,
    resource_gates,
    resource_readings,
    with_resident_baseline,
)
from repo_manager.rollout.analysis_status import AnalysisStatus
from repo_manager.rollout.analysis_step import decide
from repo_manager.rollout.settings import AnalysisPlan

GIB = 1024**3


def gpu(used_gib: float, total_gib: float = 80.0) -> dict[str, dict[str, float]]:
    return {
        "memory_used": {"triton-0 GPU-1": used_gib * GIB},
        "memory_total": {"triton-0 GPU-1": total_gib * GIB},
    }


def over(seconds: list[float], used: list[float]) -> list[tuple[float, dict]]:
    return [(1000.0 + t, gpu(u)) for t, u in zip(seconds, used, strict=True)]


def test_gpu_memory_above_the_share_for_the_whole_minute_fails() -> None:
    kept = over([0, 20, 40, 60], [77, 78, 79, 78])  # 96% .. 98.75% of 80 GiB
    [share] = resource_gates(kept, gates=LiveGates())
    assert share.name == "max_memory_share[server]"
    assert not share.passed
    assert share.value == pytest.approx(77 / 80)
    assert "triton-0 GPU-1" in share.detail


def test_a_dip_below_the_share_inside_the_minute_passes() -> None:
    kept = over([0, 20, 40, 60], [77, 70, 79, 78])
    [share] = resource_gates(kept, gates=LiveGates())
    assert share.passed and share.value == pytest.approx(70 / 80)


def test_a_share_above_the_bound_for_less_than_the_window_has_no_verdict_yet() -> None:
    kept = over([0, 20, 40], [79, 79, 79])
    [share] = resource_gates(kept, gates=LiveGates())
    assert share.passed and share.value is None
    assert "span 40 s of 60" in share.detail


def test_no_memory_gauges_means_no_memory_gate() -> None:
    assert resource_gates([(0.0, {})], gates=LiveGates()) == []
    assert resource_gates([], gates=LiveGates()) == []


def test_resident_growth_is_measured_from_the_first_reading() -> None:
    first = with_resident_baseline({"resident": {"a:8001": 400e6}}, None)
    later = with_resident_baseline({"resident": {"a:8001": 640e6}}, first)
    assert later[BASELINE_KEY] == {"a:8001": 400e6}
    [growth] = resource_gates([(0.0, later)], gates=LiveGates())
    assert growth.name == "max_resident_growth[server]"
    assert growth.value == pytest.approx(0.6) and not growth.passed
    assert resource_readings(later)["a:8001"]["resident_growth"] == pytest.approx(0.6)


def test_a_memory_failure_fails_the_step_without_canary_traffic() -> None:
    kept = over([0, 30, 60], [79, 79, 79])
    verdict = judge(kept[-1][1], kept[0][1], stable="1", canary="2", gates=LiveGates(), kept=kept)
    assert verdict.outcome == "fail"
    assert "max_memory_share[server]" in verdict.reason
    calm = over([0, 30, 60], [10, 10, 10])
    quiet = judge(calm[-1][1], calm[0][1], stable="1", canary="2", gates=LiveGates(), kept=calm)
    assert quiet.outcome == "no-data"


def test_decide_keeps_the_gauges_and_the_baseline_across_steps() -> None:
    plan = AnalysisPlan(steps=(10, 100), interval_s=20.0, threshold=1)
    status = AnalysisStatus(plan=plan)
    for at, used in ((0.0, 79.0), (30.0, 79.5), (61.0, 79.0)):
        reading = {**gpu(used), "resident": {"a:8001": 300e6 + at * 1e6}}
        step = decide(status, reading, stable="1", canary="2", weight=10, at=1000.0 + at)
        status = step.status
    assert step.then.value == "roll back"
    assert "max_memory_share[server]" in step.reason
    servers = step.details["analysis"]["servers"]  # type: ignore[index]
    assert servers["triton-0 GPU-1"]["memory_share"] == pytest.approx(79 / 80)
    assert servers["a:8001"]["resident_growth"] == pytest.approx(61 / 300)
    restored = AnalysisStatus.from_json(status.to_json())
    assert restored.snapshot[BASELINE_KEY] == {"a:8001": 300e6}  # type: ignore[index]


def test_the_scrape_source_reads_tritons_memory_gauges_per_server_and_gpu(  # type: ignore[no-untyped-def]
    http_server,
) -> None:
    address, _, responses = http_server
    responses["/metrics"] = (
        b"# TYPE nv_gpu_memory_used_bytes gauge\n"
        b'nv_gpu_memory_used_bytes{gpu_uuid="GPU-abc"} 76000000000\n'
        b"# TYPE nv_gpu_memory_total_bytes gauge\n"
        b'nv_gpu_memory_total_bytes{gpu_uuid="GPU-abc"} 80000000000\n'
        b"# TYPE nv_cpu_memory_used_bytes gauge\n"
        b"nv_cpu_memory_used_bytes 1300000000\n"
        b"# TYPE nv_cpu_memory_total_bytes gauge\n"
        b"nv_cpu_memory_total_bytes 25000000000\n"
        b"# TYPE repo_manager_server_resident_bytes gauge\n"
        b'repo_manager_server_resident_bytes{server="127.0.0.1:8001"} 400000000\n'
    )
    snapshot = ScrapeProvider([address]).snapshot("m")
    assert snapshot["memory_used"] == {f"{address} GPU-abc": 76e9, f"{address} host": 1.3e9}
    assert snapshot["memory_total"][f"{address} GPU-abc"] == 80e9
    assert snapshot["resident"] == {"127.0.0.1:8001": 4e8}
    shares = resource_readings(snapshot)
    assert shares[f"{address} GPU-abc"]["memory_share"] == pytest.approx(0.95)


def test_the_resident_memory_of_a_process_tree_counts_its_children() -> None:
    touched = "b = b'x' * 200_000_000; print('ready', flush=True); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", touched], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        alone = tree_resident_bytes(child.pid)
        assert alone is not None and alone > 200_000_000
        mine_and_children = tree_resident_bytes(os.getpid())
        assert mine_and_children is not None and mine_and_children >= alone
    finally:
        child.kill()
        child.wait()
    assert tree_resident_bytes(child.pid) is None
