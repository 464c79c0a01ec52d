"""The post-mortem of an automatic rollback: written beside the state by the analysis or
the guard that rolled back, shown by ``history --incident``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from repo_manager.cli import cli
from repo_manager.history.incident import (
    TRITON_LOG_ENV,
    incident_plot_key,
    incident_text,
    read_incident,
    triton_log_lines,
)
from tests.unit.test_analysis_step import PLAN, ScriptedProvider
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager

LOG = """I1207 10:00:00 model_lifecycle.cc] loading: m.versions:2
I1207 10:00:01 model_lifecycle.cc] successfully loaded 'm.versions' version 2
E1207 10:01:00 python_be.cc] m.versions version 2: canary bug
I1207 10:01:00 model_lifecycle.cc] loading: other.versions:2
"""


def test_a_rollback_by_the_analysis_leaves_a_post_mortem_with_its_verdicts(
    manager: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "triton.log"
    log.write_text(LOG)
    monkeypatch.setenv(TRITON_LOG_ENV, str(log))
    rollout, _, storage = manager
    provider = ScriptedProvider()
    rollout.start_analysis("m", PLAN)
    rollout.advance("m", provider)
    for _ in range(2):
        provider.interval("failing")
        rollout.advance("m", provider)
    document = read_incident(storage, "m")
    assert document is not None and document["canary"] == "2" and document["stable"] == "1"
    assert document["reason"].startswith("2 failed checks (threshold 2)")
    failed = [v for v in document["verdicts"] if v["outcome"] == "fail"]
    assert len(failed) == 2
    assert failed[-1]["readings"]["triton"]["canary"]["error_rate"] == pytest.approx(0.2)
    assert document["triton_log"] == LOG.splitlines()[:3]  # the lines naming v2 of m
    text = incident_text(document)
    assert "max_error_rate[triton]: 0.2 (bound 0.01) FAILED" in text
    if document["plot"] is not None:  # the plot extra is installed
        assert (storage.read_bytes(incident_plot_key("m")) or b"")[:4] == b"\x89PNG"
    shown = CliRunner().invoke(
        cli, ["--repository", str(storage.root), "history", "m", "--incident"]
    )
    assert shown.exit_code == 0 and "canary 2 rolled back" in shown.output


def test_a_rollback_by_hand_leaves_no_post_mortem(manager: Harness) -> None:
    manager[0].rollback("m", reason="by hand")
    assert read_incident(manager[2], "m") is None


def test_log_lines_of_other_models_are_left_out(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text(LOG)
    assert all("other" not in line for line in triton_log_lines(log, "m", "2"))
    assert triton_log_lines(tmp_path / "missing.log", "m", "2") == []
