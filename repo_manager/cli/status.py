"""``status``: stable, canary, weights, phase, the public name and every version's state."""

from __future__ import annotations

from typing import Any

import click

from repo_manager.cli.app import Context, cli, emit, require_repository
from repo_manager.cli.options import json_option
from repo_manager.cli.render import status_text


@cli.command()
@click.argument("model", required=False)
@json_option
@click.pass_obj
def status(obj: Context, model: str | None, as_json: bool) -> None:
    """Show stable, canary, weights, phase and per-version state."""
    require_repository(obj)
    manager = obj.manager()
    if model:
        document: Any = manager.status(model)
        emit(document, as_json, status_text(document))
        return
    documents = [manager.status(name) for name in manager.models()]
    text = "\n\n".join(status_text(d) for d in documents) or "no published models"
    emit(documents, as_json, text)
