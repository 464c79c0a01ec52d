"""``rollout``: the progressive analysis, one ``advance()`` per interval until the canary
is promoted or rolled back (also run by ``publish --auto``)."""

from __future__ import annotations

from typing import Any

import click

from repo_manager.cli.app import Context, cli, require_repository
from repo_manager.cli.options import (
    analysis_options,
    drain_option,
    metrics_source,
    parse_interval,
    serve_manager_metrics,
    stop_on_signals,
)
from repo_manager.cli.render import decision_text, transition_text
from repo_manager.errors import GateFailedError, RepoManagerError
from repo_manager.gates import LiveGates, parse_gate_overrides
from repo_manager.names import validate_model_name
from repo_manager.phases import Phase
from repo_manager.rollout import AnalysisPlan, RolloutManager
from repo_manager.rollout.settings import parse_step_plan, parse_waves

__all__ = ["analysis_hint", "analysis_setup", "run_analysis"]


def analysis_setup(options: dict[str, Any]) -> tuple[AnalysisPlan, Any]:
    """Validate every analysis option before anything moves (bad input: exit 2)."""
    weights, waves = parse_waves(options["steps"])
    steps, approve_before = parse_step_plan(weights, options["approve_before"])
    plan = AnalysisPlan(
        steps=steps,
        servers=waves,
        approve_before=approve_before,
        threshold=options["threshold"],
        max_metrics_errors=options["max_metrics_errors"],
        gates=parse_gate_overrides(LiveGates(), options["live_gates"]),
        interval_s=parse_interval(options["interval"]),
        detached=bool(options.get("detach")),
    )
    return plan, metrics_source(options["prometheus"], options["metrics_urls"])


def run_analysis(
    obj: Context,
    manager: RolloutManager,
    model: str,
    plan: AnalysisPlan,
    provider: Any,
    options: dict[str, Any],
) -> None:
    """Advance once per interval until the canary is promoted or rolled back."""
    interval = parse_interval(options["interval"])
    stop = stop_on_signals()
    state = manager.start_analysis(model, plan)
    click.echo(decision_text(state))
    if hint := analysis_hint(state.history[-1].action, plan, options["interval"]):
        click.echo(hint)
    step = 0
    while state.phase is Phase.ANALYZING:
        step += 1
        weight = state.weights.get(state.canary or "", 0)
        with obj.progress.stage(f"analysis step {step}: canary at {weight}%"):
            if stop.wait(interval):
                _record_stop(manager, model, "stopped by a signal (Ctrl-C or SIGTERM)")
                raise click.ClickException(
                    f"stopped; {model} stays in analysis: run rollout to resume"
                )
            before = state.generation
            try:
                state = manager.advance(model, provider)
            except RepoManagerError as exc:
                _record_stop(manager, model, f"stopped by an error: {exc}")
                raise
        for transition in state.history[len(state.history) - (state.generation - before) :]:
            click.echo(transition_text(transition))
            if hint := analysis_hint(transition.action, plan, options["interval"]):
                click.echo(hint)
    if state.phase is Phase.SUCCEEDED:
        click.echo(f"{model}: version {state.stable} promoted by the analysis")
        return
    reason = next((t.reason for t in reversed(state.history) if t.action == "rollback"), "")
    raise GateFailedError(
        f"{model}: canary rolled back by the analysis ({reason}); stable {state.stable} serves 100%"
    )


def analysis_hint(action: str, plan: AnalysisPlan, interval: str) -> str:
    """What a person watching a rollout needs to know after a step, or "": the first
    interval is a baseline, and a step without enough canary traffic waits for some."""
    if action.startswith("analysis started"):
        return (
            f"  the first reading, in {interval}, is the baseline; each later interval is "
            f"judged on at least {plan.gates.min_requests} canary requests"
        )
    if action == "analysis: baseline":
        return f"  baseline read: the first verdict comes after the next interval ({interval})"
    if action.startswith("analysis: no verdict"):
        return (
            f"  waiting for traffic: fewer than {plan.gates.min_requests} canary requests in "
            "the interval; send requests through a Router (e.g. repo-manager traffic MODEL) "
            "or lower --live-gate min_requests"
        )
    return ""


def _record_stop(manager: RolloutManager, model: str, reason: str) -> None:
    """The history says what stopped the analysis; recording it is best effort (the
    storage may be what failed), the error itself is reported either way."""
    try:
        state = manager.stop_analysis(model, reason)
    except RepoManagerError as exc:
        click.echo(f"warning: could not record the stop in the history: {exc}", err=True)
        return
    if state is not None:
        click.echo(transition_text(state.history[-1]))


@cli.command("rollout")
@click.argument("model")
@analysis_options
@click.option(
    "--detach",
    is_flag=True,
    help="Start the analysis and return: the long-running manager (reconcile --watch) "
    "takes each step, reading its own metrics sources.",
)
@drain_option
@click.pass_obj
def rollout_command(obj: Context, model: str, drain_seconds: float | None, **analysis: Any) -> None:
    """Progressive analysis: one step per interval; advance, roll back or promote."""
    model = validate_model_name(model)
    plan, provider = analysis_setup(analysis)
    require_repository(obj)
    metrics = serve_manager_metrics(analysis["metrics_port"], analysis["metrics_addr"])
    manager = obj.manager(drain_seconds=drain_seconds, metrics=metrics)
    if plan.detached:
        state = manager.start_analysis(model, plan)
        click.echo(decision_text(state))
        click.echo(
            f"  detached: the long-running manager (reconcile --watch) takes a step every "
            f"{analysis['interval']}; follow it with: repo-manager status {model} --watch"
        )
        return
    run_analysis(obj, manager, model, plan, provider, analysis)
