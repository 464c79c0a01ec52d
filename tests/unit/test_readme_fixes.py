"""What a newcomer met running the README top to bottom, each fixed (issue 15): the parts
that need no server. The rest is in tests/integration/test_newcomer.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from repo_manager.analysis import judge
from repo_manager.cli import cli
from repo_manager.cli.analysis import analysis_hint
from repo_manager.cli.app import main
from repo_manager.gates import GoldenGates, LiveGates, parse_gate_overrides
from repo_manager.rollout import AnalysisPlan
from repo_manager.state import load_state
from repo_manager.validation import ValidationReport, VersionReport, evaluate_golden_gates
from tests.unit.test_rollout_ordering import Harness, manager  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def golden_report() -> ValidationReport:
    timing = {"latency_p50_ms": 10.0, "latency_p95_ms": 12.0}
    stable = VersionReport(version="1", images=4, errors=0, map50=0.9, map50_95=0.6, **timing)
    canary = VersionReport(
        version="2", images=4, errors=1, map50=0.5, map50_95=0.3, agreement=0.5, **timing
    )
    return ValidationReport(
        model="m", golden="g", images=4, labelled=4, stable=stable, candidate=canary
    )


def test_golden_gate_reports_name_each_gate_as_gate_accepts_it() -> None:
    results = evaluate_golden_gates(golden_report(), GoldenGates())
    assert {r.name for r in results} == {f.name for f in fields(GoldenGates)} - {"min_stable_map50"}
    for result in results:  # each name in a report is one --gate takes
        parse_gate_overrides(GoldenGates(), [f"{result.name}={result.bound}"])


def test_live_gate_reports_name_each_gate_as_live_gate_accepts_it() -> None:
    now = {
        "triton_success": {"1": 100.0, "2": 20.0},
        "triton_failure": {"2": 1.0},
        "triton_duration_us": {"1": 1e6, "2": 3e5},
    }
    verdict = judge(now, {}, stable="1", canary="2", gates=LiveGates())
    assert verdict.gates
    for result in verdict.gates:
        bound, _, source = result.name.partition("[")
        assert source == "triton]"
        parse_gate_overrides(LiveGates(), [f"{bound}={result.bound}"])


def test_history_says_the_retired_version_stayed_loaded_when_the_policy_keeps_it(
    manager: Harness,  # noqa: F811
) -> None:
    rollout, fleet, _ = manager
    rollout.set_policy("m", {"specific": ["1"]})
    final = rollout.promote("m")
    assert "1" in rollout.desired_versions(final)
    assert "unloaded 1" not in final.history[-1].reason
    assert "1 kept loaded by the version policy" in final.history[-1].reason
    assert fleet.calls[-1][1] == []  # nothing unloaded


def test_history_says_unloaded_when_no_policy_keeps_the_retired_version(
    manager: Harness,  # noqa: F811
) -> None:
    rollout, _, _ = manager
    assert rollout.promote("m").history[-1].reason.endswith("unloaded 1")


def test_policy_clear_drops_the_policy_and_unloads_what_it_kept(
    manager: Harness,  # noqa: F811
) -> None:
    rollout, fleet, _ = manager
    rollout.promote("m")
    rollout.set_policy("m", {"specific": ["1"]})
    assert fleet.calls[-1][:2] == (["1", "2"], [])
    state = rollout.set_policy("m", None)  # what `policy m --clear` asks for
    assert state.policy is None and state.history[-1].action == "policy cleared"
    assert fleet.calls[-1][:2] == (["2"], ["1"])


def test_policy_clear_with_a_version_option_is_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(
        cli, ["--repository", str(tmp_path), "policy", "m", "--clear", "--latest", "2"]
    )
    assert done.exit_code != 0 and "give --clear or one of" in str(done.exception)


def test_set_weight_against_an_unreachable_triton_exits_1_and_changes_nothing(
    manager: Harness,  # noqa: F811
) -> None:
    _, _, storage = manager
    before = load_state(storage, "m")
    with pytest.raises(SystemExit) as exited:
        main(["--repository", str(storage.root), "--url", "127.0.0.1:9", "set-weight", "m", "50"])
    assert exited.value.code == 1
    assert load_state(storage, "m") == before


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "init"],
        ["init", "-v"],
        ["--verbose", "status", "--help"],
        ["status", "--verbose", "--help"],
        ["export", "--help", "-v"],
        ["serve", "-v", "--help"],
    ],
)
def test_verbose_is_accepted_before_or_after_the_command(tmp_path: Path, argv: list[str]) -> None:
    done = CliRunner().invoke(cli, ["--repository", str(tmp_path / "repo"), *argv])
    assert done.exit_code == 0, done.output


def test_every_command_takes_verbose() -> None:
    for name, command in cli.commands.items():
        assert any("-v" in p.opts for p in command.params), name


def test_rollout_says_the_first_interval_is_a_baseline_and_when_it_waits_for_traffic() -> None:
    plan = AnalysisPlan(steps=(10, 100))
    started = analysis_hint("analysis started at 10%", plan, "30s")
    assert "baseline" in started and "10 canary requests" in started
    assert "first verdict" in analysis_hint("analysis: baseline", plan, "30s")
    waiting = analysis_hint("analysis: no verdict at 10%", plan, "30s")
    assert "waiting for traffic" in waiting and "repo-manager traffic" in waiting
    assert analysis_hint("analysis: passed at 10%, now 100%", plan, "30s") == ""


def test_make_test_ends_with_each_skipped_test_and_how_to_get_what_it_needs(
    tmp_path: Path,
) -> None:
    """``make test`` passes ``-rs``: the last lines name each skip's reason, which must say
    how to get what is missing (here: no prometheus binary on PATH)."""
    (tmp_path / "test_needs_prometheus.py").write_text(
        "from tests.integration.conftest import prometheus_binary  # noqa: F401\n\n"
        "def test_scrape(prometheus_binary):\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    lines = done.stdout.splitlines()
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    assert skipped and skipped[-1] in lines[-3:], done.stdout  # at the very end
    assert "apt-get install prometheus" in skipped[0]


def test_a_skipped_gpu_test_says_how_to_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tests.conftest import _gpu_unavailable_reason

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = _gpu_unavailable_reason()
    assert reason is not None and "run `make test` on an NVIDIA GPU machine" in reason
