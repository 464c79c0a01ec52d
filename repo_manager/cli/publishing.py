"""``publish`` (export, stage, load beside stable, gate, optionally analyse) and
``validate`` (the golden-set report, changing nothing).

The export runs here, not in the manager: nothing below the CLI imports ``export``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from repo_manager.cli.analysis import analysis_setup, run_analysis
from repo_manager.cli.app import Context, cli, emit, require_repository
from repo_manager.cli.options import (
    analysis_options,
    drain_option,
    export_options,
    json_option,
    serve_manager_metrics,
    verbose_option,
)
from repo_manager.cli.render import report_text
from repo_manager.errors import GateFailedError, InvalidInputError
from repo_manager.gates import GoldenGates, parse_gate_overrides
from repo_manager.names import validate_model_name, validate_version
from repo_manager.rollout import parse_weight, resolve_weights
from repo_manager.timing import PhaseTimer


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.argument("version")
@verbose_option
@click.option("--weights", default=None, help="Ultralytics .pt [default: MODEL.pt here].")
@click.option(
    "--exported",
    type=click.Path(path_type=Path),
    default=None,
    help="Publish VERSION of a model folder `export` wrote (e.g. plans for several GPU kinds).",
)
@export_options
@click.option(
    "--canary-weight",
    default="10",
    show_default=True,
    help="Percent of traffic a new canary starts with.",
)
@click.option("--force", is_flag=True, help="Publish a plan even if the servers' TensorRT differs.")
@click.option(
    "--golden",
    type=click.Path(path_type=Path),
    default=None,
    help="Golden-set folder: the canary must pass its gates before any traffic.",
)
@click.option(
    "--gate",
    "gates",
    multiple=True,
    help="Golden gate bound NAME=VALUE (repeatable), e.g. max_map50_drop=0.02.",
)
@click.option("--auto", is_flag=True, help="Then run the progressive analysis (as `rollout`).")
@analysis_options
@drain_option
@click.pass_obj
def publish(
    obj: Context,
    model: str,
    version: str,
    weights: str | None,
    exported: Path | None,
    export_options: Any,
    canary_weight: str,
    force: bool,
    golden: Path | None,
    gates: tuple[str, ...],
    auto: bool,
    drain_seconds: float | None,
    **analysis: Any,
) -> None:
    """Publish VERSION of MODEL: first becomes stable, later ones the canary."""
    model = validate_model_name(model)
    version = validate_version(version)
    weight = parse_weight(canary_weight)
    golden_gates = parse_gate_overrides(GoldenGates(), gates)
    plan, provider = analysis_setup(analysis) if auto else (None, None)
    if golden is not None:
        from repo_manager.validation import load_golden_set

        load_golden_set(golden)
    if exported is not None and weights is not None:
        raise InvalidInputError("give --weights or --exported, not both")
    path = None if exported is not None else resolve_weights(model, weights)
    require_repository(obj)
    metrics = (
        serve_manager_metrics(analysis["metrics_port"], analysis["metrics_addr"]) if auto else None
    )
    manager = obj.manager(drain_seconds=drain_seconds, metrics=metrics)
    gated = golden is not None and manager.state(model) is not None
    first_weight = 0 if gated else weight
    # What can refuse the publish is refused before the export, which takes seconds to minutes.
    manager.check_publish(model, version, canary_weight=first_weight)
    timer = PhaseTimer(progress=obj.progress, label=f"publish {model} {version}")
    with tempfile.TemporaryDirectory(prefix="repo-manager-stage-") as tmp:
        staged = Path(tmp) / model
        with timer.phase("export"):
            _stage_version(obj, model, version, staged, path, exported, export_options)
        state = manager.publish(
            model, version, staged=staged, canary_weight=first_weight, force=force, timer=timer
        )
    if state.stable == version:
        obj.progress(f"publish {model} {version} timings: {timer.summary()}")
        click.echo(f"{model} version {version} published as stable")
        return
    if gated:
        assert golden is not None
        with timer.phase("gate"):
            report = manager.gate_canary(model, golden, golden_gates, weight=weight)
        click.echo(report_text(report.to_dict()))
    obj.progress(f"publish {model} {version} timings: {timer.summary()}")
    click.echo(f"{model} version {version} published as canary at {weight}%")
    if plan is not None and provider is not None:
        run_analysis(obj, manager, model, plan, provider, analysis)


def _stage_version(
    obj: Context,
    model: str,
    version: str,
    staged: Path,
    weights: Path | None,
    exported: Path | None,
    export_options: Any,
) -> None:
    """Write ``staged`` (config.pbtxt + VERSION/) for the manager: export ``weights``, or copy
    VERSION of the folder ``export`` wrote, checked against its manifest again."""
    from export import export_model, stage_exported  # heavy (torch): publish only

    if exported is not None:
        stage_exported(exported, staged, model=model, version=version)
        return
    assert weights is not None
    obj.progress(f"exporting {weights} as {model} version {version}")
    export_model(weights, staged, model_name=model, version=version, options=export_options)


@cli.command()
@click.argument("model")
@click.argument("version")
@click.option(
    "--golden",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder of images, with optional YOLO labels.",
)
@click.option("--gate", "gates", multiple=True, help="Gate bound NAME=VALUE (repeatable).")
@json_option
@verbose_option
@click.pass_obj
def validate(
    obj: Context, model: str, version: str, golden: Path, gates: tuple[str, ...], as_json: bool
) -> None:
    """Run the golden set through stable and VERSION (pinned) and judge it; changes nothing."""
    model = validate_model_name(model)
    version = validate_version(version)
    bounds = parse_gate_overrides(GoldenGates(), gates)
    require_repository(obj)
    report = obj.manager().validate(model, version, golden, bounds)
    document = report.to_dict()
    emit(document, as_json, report_text(document))
    if not report.passed:
        failures = "; ".join(g.describe() for g in report.failures())
        raise GateFailedError(f"{model} version {version} failed the golden gate: {failures}")
