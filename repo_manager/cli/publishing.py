"""``publish`` (export, upload, load beside stable, gate, optionally analyse) and
``validate`` (the golden-set report, changing nothing).

The export runs here, not in the manager: nothing below the CLI imports ``export``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
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
    servers_options,
)
from repo_manager.cli.render import report_text
from repo_manager.errors import GateFailedError, InvalidInputError, RepoManagerError
from repo_manager.gates import GoldenGates, parse_gate_overrides
from repo_manager.names import validate_model_name, validate_version
from repo_manager.rollout import RolloutManager, parse_weight, resolve_weights
from repo_manager.rollout.cohorts import weight_move
from repo_manager.rollout.server_moves import servers_words
from repo_manager.server_selection import parse_names
from repo_manager.state import cohort_words
from repo_manager.timing import PhaseTimer


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.argument("version")
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
@click.option(
    "--cohort",
    default=None,
    metavar="RULE",
    help="Give the new canary only to requests whose attributes match RULE, at "
    "--canary-weight (100 when not given); everyone else gets 0 (as set-weight --cohort).",
)
@click.option("--force", is_flag=True, help="Publish a plan even if the servers' TensorRT differs.")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the canary in progress (refused without: promote or roll it back first).",
)
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
@servers_options
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
    export_options: dict[str, Any],
    canary_weight: str,
    cohort: str | None,
    force: bool,
    replace: bool,
    golden: Path | None,
    gates: tuple[str, ...],
    servers: str | None,
    exclude: str | None,
    auto: bool,
    drain_seconds: float | None,
    **analysis: Any,
) -> None:
    """Publish VERSION of MODEL: first becomes stable, later ones the canary."""
    model = validate_model_name(model)
    version = validate_version(version)
    if cohort is not None and _defaulted("canary_weight"):
        canary_weight = "100"  # a cohort's canary gets the whole cohort unless told
    weight = parse_weight(canary_weight)
    if cohort is not None:
        weight_move(weight, cohort, None)  # a bad rule: one line, before the export
    names = parse_names(servers, "--servers"), parse_names(exclude, "--exclude")
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
    # Read only when it matters (as before cohorts: a plain publish reads no state here).
    known = (golden is not None or cohort is not None) and manager.state(model) is not None
    if cohort is not None and not known:
        raise InvalidInputError(
            f"--cohort needs a canary: version {version} of {model} is its first"
        )
    gated = golden is not None and known
    # A gated canary gets no traffic before its gate, a cohort's none before its rule stands.
    first_weight = 0 if gated or cohort is not None else weight
    # What can refuse the publish is refused before the export, which takes seconds to minutes.
    chosen = None if names == (None, None) else manager.server_moves.select(*names)
    if plan is not None:
        manager.server_moves.check_waves(plan)
        if names == (None, None) and plan.servers:  # loaded where its first wave is
            chosen = manager.server_moves.select(plan.servers[0], None)
    request = manager.check_publish(
        model, version, canary_weight=first_weight, replace=replace, servers=chosen
    )
    timer = PhaseTimer(progress=obj.progress, label=f"publish {model} {version}")
    sweep_stale_staging()
    with interrupts_undone(model, version), staging_folder() as tmp:
        staged = tmp / model
        with timer.phase("export"):
            _stage_version(obj, manager, model, version, staged, path, exported, export_options)
        state = manager.publish(
            model,
            version,
            staged=staged,
            canary_weight=first_weight,
            force=force,
            timer=timer,
            replace=replace,
            servers=chosen,
        )
    if request.replaces:
        click.echo(f"{model}: replaced {request.replaces} (unloaded)")
    if state.stable == version:
        obj.progress(f"publish {model} {version} timings: {timer.summary()}")
        click.echo(f"{model} version {version} published as stable")
        return
    if gated:
        assert golden is not None
        with timer.phase("gate"):
            report = manager.gate_canary(model, golden, golden_gates, weight=weight, cohort=cohort)
        click.echo(report_text(report.to_dict()))
    elif cohort is not None:
        manager.set_weight(model, weight, cohort=cohort, reason=f"publish {version}")
    obj.progress(f"publish {model} {version} timings: {timer.summary()}")
    shown = f"at {weight}%"
    if cohort is not None:  # as the gate or set-weight left it
        shown = f"{cohort_words((manager.state(model) or state).cohort)}, 0% of the others"
    where = "" if state.servers is None else f", {servers_words(state.servers)}"
    click.echo(f"{model} version {version} published as canary {shown}{where}")
    if plan is not None and provider is not None:
        run_analysis(obj, manager, model, plan, provider, analysis)


def _defaulted(parameter: str) -> bool:
    """True when the command line left ``parameter`` at its default."""
    source = click.get_current_context().get_parameter_source(parameter)
    return source in (None, click.core.ParameterSource.DEFAULT)


STAGING_PREFIX = "repo-manager-stage-"


@contextlib.contextmanager
def staging_folder() -> Iterator[Path]:
    """A private folder for the export, removed afterwards; its name carries this process's
    id, so that ``sweep_stale_staging`` can tell the folders of killed runs."""
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-") as tmp:
        yield Path(tmp)


def sweep_stale_staging() -> None:
    """Remove the staging folders of publishes whose process is gone (SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        owner = folder.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def interrupts_undone(model: str, version: str) -> Iterator[None]:
    """SIGTERM (a container's stop) and SIGINT interrupt alike, so that an interrupted
    publish undoes itself and removes its staging folder; either ends in one line. SIGINT
    is set here as the long-running commands set it (``stop_on_signals``): in fresh-clone
    runs of the suite started as a background job, a publish signalled with SIGINT while
    Triton reported its version LOADING finished with exit 0, while SIGTERM (set here
    already) interrupted it."""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt as exc:
        # The publisher notes how its undo went, when the interrupt reached it.
        outcome = "; ".join(getattr(exc, "__notes__", ())) or (
            "nothing of it was kept unless its decision was recorded (see status)"
        )
        raise RepoManagerError(f"publish {model} {version} interrupted; {outcome}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stage_version(
    obj: Context,
    manager: RolloutManager,
    model: str,
    version: str,
    staged: Path,
    weights: Path | None,
    exported: Path | None,
    given: dict[str, Any],
) -> None:
    """Write ``staged`` (config.pbtxt + VERSION/) for the manager: export ``weights`` with
    the settings the model serves unless given, or copy VERSION of the folder ``export``
    wrote, checked against its manifest again."""
    from export import choose_export_options, export_model, stage_exported  # heavy: publish only

    if exported is not None:
        stage_exported(exported, staged, model=model, version=version)
        return
    assert weights is not None
    chosen = choose_export_options(given, manager.repository.config(model), model=model)
    obj.progress(f"exporting {weights} as {model} version {version}: {chosen.describe()}")
    export_model(weights, staged, model_name=model, version=version, options=chosen.options)


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
