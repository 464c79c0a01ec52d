"""``history``: every recorded decision of a model, oldest first, as text, JSON or a
picture (``--plot``). Reads only the repository (the state and its archive), no server."""

from __future__ import annotations

from pathlib import Path

import click

from repo_manager.cli.app import Context, cli, emit, require_repository
from repo_manager.cli.options import json_option
from repo_manager.cli.render import history_text
from repo_manager.errors import InvalidInputError
from repo_manager.history import entry_document, read_history
from repo_manager.history.incident import incident_text, read_incident
from repo_manager.names import validate_model_name


@cli.command()
@click.argument("model")
@json_option
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the newest N entries.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Draw weights over time and each analysis step's readings to this PNG "
    "(needs the plot extra: pip install 'repo-manager[plot]').",
)
@click.option(
    "--incident",
    is_flag=True,
    help="The post-mortem of the last automatic rollback: why, every verdict on the "
    "canary with its readings, the servers right after, Triton's log lines naming it.",
)
@click.pass_obj
def history(
    obj: Context,
    model: str,
    as_json: bool,
    limit: int | None,
    plot: Path | None,
    incident: bool,
) -> None:
    """Every transition of MODEL, oldest first: time, action, phases, weights, who, why."""
    model = validate_model_name(model)
    require_repository(obj)
    if incident:
        document = read_incident(obj.storage(), model)
        if document is None:
            raise InvalidInputError(f"{model} has no automatic rollback to report")
        emit(document, as_json, incident_text(document))
        return
    entries = read_history(obj.storage(), model, limit=limit)
    if plot is not None:
        from repo_manager.history.plot import write_plot

        write_plot(entries, plot, model=model)
        click.echo(f"{model}: {len(entries)} transitions drawn to {plot}", err=as_json)
        if not as_json:
            return
    documents = [entry_document(e) for e in entries]
    emit(documents, as_json, history_text(documents))
