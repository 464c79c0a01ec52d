"""The CLI's text renderers: pure functions of the documents the commands print as JSON."""

from __future__ import annotations

from typing import Any

from repo_manager.cli.render import (
    history_text,
    reconcile_text,
    report_text,
    status_text,
    transition_text,
    watch_text,
)
from repo_manager.state import Transition


def status_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model": "yolov8s",
        "stable": "2",
        "canary": "3",
        "weights": {"2": 90, "3": 10},
        "phase": "progressing",
        "versions": [{"version": "2", "state": "READY"}, {"version": "3", "state": "READY"}],
        "versions_model": "yolov8s.versions",
        "public": {"name": "yolov8s", "version": "2"},
        "servers": [{"url": "a:8001", "error": None, "public": "2", "versions": []}],
        "analysis": None,
        "last_transition": {
            "at": "2026-12-02T04:00:00.000+00:00",
            "action": "publish canary at 10%",
            "from": "succeeded",
            "to": "progressing",
            "reason": "",
            "who": "ops@build-7",
        },
    }
    document.update(changes)
    return document


def test_status_text_names_what_the_public_name_answers_from_and_every_version() -> None:
    text = status_text(status_document())
    lines = text.splitlines()
    assert lines[0] == "yolov8s  phase progressing  stable 2  canary 3  weights v2: 90%, v3: 10%"
    assert lines[1] == (
        "  public name yolov8s (clients that name no version): version 2; "
        "the Router calls yolov8s.versions pinned"
    )
    assert lines[2:4] == ["  version 2: READY", "  version 3: READY"]
    assert lines[-1] == (
        "  last: publish canary at 10% (succeeded -> progressing) "
        "at 2026-12-02T04:00:00.000+00:00 by ops@build-7"
    )


def test_status_text_shows_each_server_of_a_fleet_and_an_unloaded_public_name() -> None:
    servers = [
        {
            "url": "a:8001",
            "error": None,
            "public": "2",
            "versions": [{"version": "2", "state": "READY"}],
        },
        {"url": "b:8001", "error": None, "public": None, "versions": []},
        {"url": "c:8001", "error": "Triton unreachable at c:8001", "public": None, "versions": []},
    ]
    text = status_text(
        status_document(servers=servers, public={"name": "yolov8s", "version": None})
    )
    assert "public name yolov8s (clients that name no version): not loaded" in text
    assert "  server a:8001: v2 READY; public -> v2" in text
    assert "  server b:8001: no versions; public not loaded" in text
    assert "  server c:8001: Triton unreachable at c:8001" in text


def test_status_text_shows_the_analysis_step_and_its_last_verdict() -> None:
    analysis = {
        "plan": {"steps": [10, 50, 100], "threshold": 2, "max_metrics_errors": 5},
        "step": 1,
        "failed_checks": 1,
        "metrics_errors": 0,
        "last": {"outcome": "fail", "reason": "error rate 0.2 > 0.01"},
    }
    text = status_text(status_document(analysis=analysis))
    assert "  analysis: step 2/3 failed checks 1/2 metrics errors 0/5" in text
    assert "  last analysis: fail error rate 0.2 > 0.01" in text


def test_report_text_gives_each_versions_figures_and_each_gate() -> None:
    role = {
        "version": "2",
        "map50": 0.9641,
        "map50_95": None,
        "latency_p50_ms": 8.25,
        "latency_p95_ms": 9.5,
        "errors": 0,
        "images": 40,
        "agreement": None,
    }
    document = {
        "golden": "golden/",
        "images": 40,
        "labelled": 40,
        "stable": role,
        "candidate": {**role, "version": "3", "agreement": 0.9},
        "gates": [{"name": "min_agreement", "value": 0.9, "bound": 0.8, "passed": True}],
    }
    lines = report_text(document).splitlines()
    assert lines[0] == "golden set golden/: 40 images, 40 labelled"
    assert lines[1] == ("  stable v2: mAP50 0.964 mAP50-95 - p50 8.2 ms p95 9.5 ms errors 0/40")
    assert lines[2].endswith("errors 0/40 agreement 0.900")
    assert lines[3] == "  gate min_agreement: 0.9 (bound 0.8) ok"


def test_reconcile_text_says_what_each_model_got_or_that_nothing_was_needed() -> None:
    documents = [
        {"model": "a", "desired": ["1", "2"], "actions": ["loaded 1,2 on x:1"], "unreachable": []},
        {"model": "b", "desired": ["4"], "actions": [], "unreachable": []},
    ]
    assert reconcile_text(documents) == (
        "a: versions 1,2; loaded 1,2 on x:1\nb: versions 4; already in desired state"
    )
    assert reconcile_text([]) == "no published models"


def test_transition_text_puts_the_reason_after_the_action() -> None:
    moved = Transition(
        at="t",
        action="promoted",
        from_phase="promoting",
        to_phase="succeeded",
        stable="2",
        canary=None,
        weights={"2": 100},
        reason="unloaded 1",
    )
    assert transition_text(moved) == "t promoted: unloaded 1"


def test_status_watch_and_history_show_the_canarys_servers() -> None:
    servers = [
        {"url": u, "error": None, "public": "2", "versions": [{"version": "2", "state": "READY"}]}
        for u in ("a:8001", "b:8001")
    ]
    document = status_document(servers=servers, canary_servers=["b:8001"], generation=4)
    text = status_text(document)
    assert "  canary servers: only b:8001" in text
    assert "  server b:8001 [canary server]: v2 READY; public -> v2" in text
    assert "  server a:8001: v2 READY; public -> v2" in text
    frame = watch_text(document, live=None, note="no source", seconds=None, recent=[], now="t")
    assert "servers   canary only on b:8001" in frame
    assert "server    b:8001 [canary server]: v2 READY; public -> v2" in frame
    entry = {
        "at": "2026-12-07T20:00:00.000+00:00",
        "action": "set-weight 25%",
        "kind": "move",
        "from": "progressing",
        "to": "progressing",
        "weights": {"2": 75, "3": 25},
        "who": "ops",
        "reason": "",
        "servers": ["b:8001"],
    }
    assert "canary servers: b:8001" in history_text([entry])


def test_status_watch_names_each_waves_servers_in_the_steps_line() -> None:
    plan = {
        "steps": [10, 25, 25, 100],
        "servers": [["b"], ["b"], ["all"], ["all"]],
        "threshold": 2,
        "max_metrics_errors": 3,
    }
    analysis = {"plan": plan, "step": 2, "failed_checks": 0, "metrics_errors": 0}
    frame = watch_text(
        status_document(analysis=analysis, generation=5),
        live=None,
        note="-",
        seconds=None,
        recent=[],
        now="t",
    )
    assert "steps     servers=b: 10% > 25% > servers=all: [25%] > 100%   (step 3 of 4)" in frame
