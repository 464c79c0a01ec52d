"""``export``: Ultralytics weights into a Triton model folder (no server involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from repo_manager.cli.app import Context, cli
from repo_manager.cli.options import export_options
from repo_manager.errors import InvalidInputError
from repo_manager.names import validate_model_name, validate_version
from repo_manager.rollout import resolve_weights


@cli.command("export")
@click.argument("weights", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Model folder to write (config.pbtxt + VERSION/).",
)
@click.option("--name", default=None, help="Model name in the config [default: output's name].")
@click.option("--version", "version", default="1", show_default=True)
@click.option(
    "--add-gpu",
    is_flag=True,
    help="Add this GPU kind's plan to the existing VERSION (fleets of several GPU kinds).",
)
@export_options
@click.pass_obj
def export_command(
    obj: Context,
    weights: Path,
    output: Path,
    name: str | None,
    version: str,
    add_gpu: bool,
    export_options: dict[str, Any],
) -> None:
    """Export Ultralytics WEIGHTS into a Triton model folder.

    A folder that holds a model already gives the settings not given (format, imgsz, max
    batch, instances), as ``publish`` takes them from the repository."""
    from export import choose_export_options, export_model, export_plan_for_this_gpu
    from repo_manager.modelconfig import parse_config
    from repo_manager.names import CONFIG_FILE

    model = validate_model_name(name or output.resolve().name)
    version = validate_version(version)
    if not add_gpu and (output / version).exists():
        raise InvalidInputError(f"{output / version} already exists")
    config_path = output / CONFIG_FILE
    served = (
        parse_config(config_path.read_bytes(), source=str(config_path))
        if config_path.is_file()
        else None
    )
    chosen = choose_export_options(export_options, served, model=model)
    export = export_plan_for_this_gpu if add_gpu else export_model
    path = resolve_weights(model, str(weights))
    obj.progress(f"exporting {path}: {chosen.describe()}")
    with obj.progress.stage(f"export {path.name} as {model} version {version}"):
        result = export(path, output, model_name=model, version=version, options=chosen.options)
    plans = sorted(result.manifest.get("plans", {}))
    suffix = f" (plans for compute capability {', '.join(plans)})" if plans else ""
    click.echo(f"exported {result.version_dir}{suffix}")
