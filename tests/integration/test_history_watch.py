"""``history``, ``status --watch`` and ``history --plot`` against the real tritonserver:
every decision recorded with who and why, a live view of a rollout another process drives,
and the picture of that rollout (its series checked through the figure's data)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from repo_manager import Router
from repo_manager.history import read_history, recorded_by
from repo_manager.history.plot import figure, plot_data
from repo_manager.storage import LocalStorage
from tests.integration.conftest import CLI, Stack
from tests.integration.test_gates import MODEL, detect_traffic, golden_images, rollout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FIELDS = {
    "at",
    "action",
    "kind",
    "from",
    "to",
    "stable",
    "canary",
    "weights",
    "cohort",
    "public",
    "who",
    "reason",
    "details",
    "servers",
}


def history(stack: Stack, *args: str) -> list[dict]:
    return json.loads(stack.cli("history", MODEL, "--json", *args).stdout)


def test_history_lists_every_decision_with_its_fields_who_and_why(
    stack: Stack, trained_detector: Path, golden_set: Path, weights: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector)
    stack.publish(MODEL, "2", trained_detector)
    # An aborted rollout: its metrics source is down and may be unreadable once only.
    stopped = stack.cli(
        "rollout", MODEL, "--steps", "25,100", "--interval", "200ms",
        "--max-metrics-errors", "1", "--metrics-url", "http://127.0.0.1:9/metrics",
        check=False,
    )  # fmt: skip
    assert stopped.code == 1, stopped.stderr
    stack.cli("set-weight", MODEL, "30", "--reason", "more traffic for the canary")
    stack.cli("rollback", MODEL, "--drain-seconds", "0.5", "--reason", "users reported misses")
    # A failed gate: untrained weights stopped by the golden gate before any traffic.
    bad = stack.publish(MODEL, "3", weights, "--golden", str(golden_set), check=False)
    assert bad.code == 1, bad.stderr
    stack.publish(MODEL, "4", trained_detector)
    stack.cli("promote", MODEL, "--drain-seconds", "0.5")

    entries = history(stack)
    assert all(set(e) == FIELDS for e in entries)
    assert {e["who"] for e in entries} == {recorded_by()}
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    by_action = [(e["action"], e["from"], e["to"], e["weights"]) for e in entries]
    assert by_action == [
        ("publish stable", None, "initialized", {"1": 100}),
        ("publish canary at 10%", "initialized", "progressing", {"1": 90, "2": 10}),
        ("analysis started at 25%", "progressing", "analyzing", {"1": 75, "2": 25}),
        ("analysis: metrics unavailable (1/1)", "analyzing", "analyzing", {"1": 75, "2": 25}),
        ("analysis stopped at 25%", "analyzing", "analyzing", {"1": 75, "2": 25}),
        ("set-weight 30%", "analyzing", "progressing", {"1": 70, "2": 30}),
        ("rollback", "progressing", "rolling_back", {"1": 100}),
        ("rolled back", "rolling_back", "rolled_back", {"1": 100}),
        ("publish canary at 0%", "rolled_back", "progressing", {"1": 100, "3": 0}),
        ("rollback", "progressing", "rolling_back", {"1": 100}),
        ("rolled back", "rolling_back", "rolled_back", {"1": 100}),
        ("publish canary at 10%", "rolled_back", "progressing", {"1": 90, "4": 10}),
        ("promote", "progressing", "promoting", {"4": 100}),
        ("promoted", "promoting", "succeeded", {"4": 100}),
    ]
    reasons = [e["reason"] for e in entries]
    assert reasons[0].startswith("timings: export")
    unreachable = "metrics source http://127.0.0.1:9/metrics unreachable"
    assert unreachable in reasons[3]
    assert entries[3]["details"]["analysis"]["outcome"] == "metrics-unavailable"
    assert reasons[4].startswith("stopped by an error: ") and unreachable in reasons[4]
    assert reasons[5] == "more traffic for the canary"
    assert reasons[6] == "users reported misses"
    # The failed gate: which gate, its value and its bound.
    assert reasons[9].startswith("golden gate failed: ")
    assert "max_map50_drop: " in reasons[9] and "(bound 0.05) FAILED" in reasons[9]
    assert "answers from 4" in reasons[13]
    assert [e["stable"] for e in entries[-2:]] == ["4", "4"]
    assert [e["public"] for e in entries][-1] == "4"

    assert history(stack, "--limit", "3") == entries[-3:]
    text = stack.cli("history", MODEL).stdout
    assert "why: users reported misses" in text
    assert "rolling_back -> rolled_back" in text and recorded_by() in text


def test_status_watch_follows_a_rollout_driven_from_another_process_to_its_end(
    stack: Stack, trained_detector: Path, golden_set: Path, router_metrics: str, tmp_path: Path
) -> None:
    stack.publish(MODEL, "1", trained_detector)
    watch_command = [
        *CLI, "--repository", str(stack.repository), "--url", stack.url,
        "status", MODEL, "--watch", "--interval", "500ms",
        "--metrics-url", stack.server.metrics_url,
    ]  # fmt: skip
    with (
        Router(MODEL, url=stack.url, repository=str(stack.repository)) as router,
        detect_traffic(router, golden_images(golden_set)) as record,
    ):
        stack.publish(MODEL, "2", trained_detector)
        watch = subprocess.Popen(
            watch_command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "YOLO_OFFLINE": "1"},
        )
        try:
            time.sleep(2)  # it reads the metrics once before the rollout starts
            done = rollout(stack, router_metrics)
            out, err = watch.communicate(timeout=60)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=10)
    assert "promoted by the analysis" in done.stdout and record.failures == []
    assert watch.returncode == 0, err
    assert "\x1b" not in out  # a pipe: append-only, no escape codes
    steps = [
        "analysis started at 25%",
        "analysis: baseline",
        "analysis: passed at 25%, now 50%",
        "analysis: passed at 50%, now 100%",
        "analysis: passed the last step at 100%",
        "promote",
        "promoted",
    ]
    positions = [out.index(f" {step}") for step in steps]
    assert positions == sorted(positions)
    # A frame per read that saw a new decision (the first step lasts two intervals; under
    # load a read may come after two decisions, so later steps may share a frame).
    assert "steps     [25%] > 50% > 100%   (step 1 of 3)" in out
    assert "analysis  failed checks 0/2" in out
    live = [line for line in out.splitlines() if line.startswith("  triton  canary  v2")]
    assert live and any("req/s" in line and "latency" in line for line in live)
    assert f"server    {stack.url}: v1 READY, v2 READY; public -> v1" in out
    last_frame = out[out.rindex(f"{MODEL}  phase") :]
    assert last_frame.startswith(f"{MODEL}  phase succeeded  stable 2")

    # Already over: one frame, at once.
    started = time.monotonic()
    again = stack.cli("status", MODEL, "--watch", "--metrics-url", "http://127.0.0.1:9/metrics")
    assert time.monotonic() - started < 20
    assert again.stdout.count(f"{MODEL}  phase succeeded") == 1

    # The picture of that rollout: weights and each step's readings, from the history.
    picture = tmp_path / "rollout.png"
    drawn = stack.cli("history", MODEL, "--plot", str(picture))
    assert "transitions drawn to" in drawn.stderr + drawn.stdout
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entries = read_history(LocalStorage(stack.repository), MODEL)
    data = plot_data(entries)
    assert data.weights["2"][0] is None  # before its publish
    assert data.weights["2"][1:] == [e.weights["2"] for e in entries[1:]]
    assert data.weights["2"][-1] == 100 and data.weights["1"][-3:] == [0, None, None]
    # Every judged step (a noisy latency check may fail once without a rollback).
    analyses = [(e, e.details["analysis"]) for e in entries if e.details]
    judged = [e for e, step in analyses if step["outcome"] in ("pass", "fail")]
    assert [s.weight for s in data.steps] == [
        step["weight"] for _, step in analyses if step["outcome"] in ("pass", "fail")
    ]
    assert {25, 50, 100} <= {s.weight for s in data.steps}
    assert data.source in ("router", "triton")
    for step, entry in zip(data.steps, judged, strict=True):
        assert entry.details is not None
        canary = entry.details["analysis"]["readings"][data.source]["canary"]
        assert step.canary_error_rate == canary["error_rate"] == 0.0  # no request failed
        assert step.canary_latency_ms == pytest.approx(canary["latency_ms"])
        assert step.max_error_rate == 0.01
        # At 100% stable may have had no request: no latency, so no latency gate either.
        stable = step.stable_latency_ms
        assert step.max_latency_ms == (None if stable is None else pytest.approx(stable * 1.5))
    lines = {line.get_label(): line for line in figure(entries, model=MODEL).axes[1].get_lines()}
    assert list(lines["canary error rate"].get_ydata()) == [0.0] * len(judged)
    assert list(lines["gate: max error rate"].get_ydata()) == [1.0] * len(judged)
