"""``init``: make the repository servable before any Triton starts (``serve`` runs it too)."""

from __future__ import annotations

import click

from repo_manager.cli.app import Context, cli
from repo_manager.storage import Storage

__all__ = ["init", "prepare_repository"]


def prepare_repository(obj: Context) -> Storage:
    """The repository, checked and made servable: the one init step every start runs."""
    storage = obj.storage()
    storage.prepare()
    return storage


@cli.command()
@click.pass_obj
def init(obj: Context) -> None:
    """Make the repository servable before any Triton starts (idempotent).

    Triton refuses to start on an S3 prefix that holds no object yet, and on a missing
    folder; init writes a small marker object there (or creates the folder). Run it before
    the tritonservers of a fleet: compose and the Kubernetes manifests do.
    """
    storage = prepare_repository(obj)
    click.echo(f"repository {storage.location} is ready for Triton at {storage.triton_location}")
