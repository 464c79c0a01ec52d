"""``export``: Ultralytics weights into a Triton model folder (no server involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from repo_manager.cli.app import cli
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
def export_command(
    weights: Path,
    output: Path,
    name: str | None,
    version: str,
    add_gpu: bool,
    export_options: Any,
) -> None:
    """Export Ultralytics WEIGHTS into a Triton model folder."""
    from export import export_model, export_plan_for_this_gpu

    model = validate_model_name(name or output.resolve().name)
    version = validate_version(version)
    if not add_gpu and (output / version).exists():
        raise InvalidInputError(f"{output / version} already exists")
    export = export_plan_for_this_gpu if add_gpu else export_model
    result = export(
        resolve_weights(model, str(weights)),
        output,
        model_name=model,
        version=version,
        options=export_options,
    )
    plans = sorted(result.manifest.get("plans", {}))
    suffix = f" (plans for compute capability {', '.join(plans)})" if plans else ""
    click.echo(f"exported {result.version_dir}{suffix}")
