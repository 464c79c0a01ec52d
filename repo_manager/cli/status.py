"""``status``: stable, canary, weights, phase, the public name and every version's state;
``status MODEL --watch``: the same, live, until the rollout ends (``watch.py``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from repo_manager.cli.app import Context, cli, emit, require_repository
from repo_manager.cli.options import (
    json_option,
    metrics_source,
    metrics_source_options,
    parse_interval,
    stop_on_signals,
)
from repo_manager.cli.render import status_text
from repo_manager.cli.watch import Watch
from repo_manager.errors import IntegrityError, InvalidInputError
from repo_manager.names import validate_model_name
from repo_manager.notifications import read_failures


@cli.command()
@click.argument("model", required=False)
@json_option
@click.option(
    "--watch",
    is_flag=True,
    help="Live view of MODEL until its rollout ends (redrawn in place on a terminal, "
    "append-only otherwise): steps, weights, analysis, per-version live figures, servers.",
)
@click.option("--interval", default="1s", show_default=True, help="--watch: time between readings.")
@metrics_source_options
@click.pass_obj
def status(
    obj: Context,
    model: str | None,
    as_json: bool,
    watch: bool,
    interval: str,
    metrics_urls: tuple[str, ...],
    prometheus: str | None,
) -> None:
    """Show stable, canary, weights, phase and per-version state."""
    if watch:
        if model is None or as_json:
            raise InvalidInputError("status --watch takes one MODEL and no --json")
        _watch(obj, validate_model_name(model), interval, metrics_urls, prometheus)
        return
    require_repository(obj)
    manager = obj.manager()
    failure = read_failures(manager.repository.storage)
    if model:
        document: Any = manager.status(model)
        if failure is not None:
            document["notifications"] = {"last_failure": failure}
        emit(document, as_json, status_text(document) + _failure_text(failure))
        _refuse_tampered([document])
        return
    documents = [manager.status(name) for name in manager.models()]
    text = "\n\n".join(status_text(d) for d in documents) or "no published models"
    emit(documents, as_json, text + _failure_text(failure))
    _refuse_tampered(documents)


def _refuse_tampered(documents: list[dict[str, Any]]) -> None:
    """Exit 1 after the status when a model is not what was published (the first finding
    on stderr: the status above lists them all)."""
    for document in documents:
        for what, why in document["refused"].items():
            name = "the config" if what == "config" else f"version {what}"
            raise IntegrityError(f"{document['model']} {name} refused: {why}")


def _failure_text(failure: dict[str, Any] | None) -> str:
    """The line that says notifications fail (the URL redacted when it was written)."""
    if failure is None:
        return ""
    return (
        f"\nnotifications: a delivery to {failure.get('target')} was dropped at "
        f"{failure.get('at')} ({failure.get('error')})"
    )


def _watch(
    obj: Context, model: str, interval: str, urls: tuple[str, ...], prometheus: str | None
) -> None:
    """Exit 0 once the rollout reached a terminal phase, or when stopped (Ctrl-C)."""
    seconds = parse_interval(interval)
    provider = metrics_source(prometheus, urls)
    require_repository(obj)
    manager = obj.manager()

    tty = sys.stdout.isatty()
    Watch(
        read=lambda: manager.status_with_state(model),
        sample=lambda: provider.snapshot(model),
        write=lambda text: click.echo(text, nl=False),
        tty=tty,
        interval=seconds,
        stop=stop_on_signals(),
        source=provider.name,
    ).run()
    if tty:
        click.echo()
