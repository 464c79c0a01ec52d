"""``init``: make the repository servable before any Triton starts (``serve`` runs it too);
``sign``: sign what a repository held before the manager had a signing key."""

from __future__ import annotations

import click

from repo_manager.cli.app import Context, cli, require_repository
from repo_manager.names import validate_model_name
from repo_manager.repository import ModelRepository
from repo_manager.storage import Storage

__all__ = ["init", "prepare_repository", "sign"]


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


@cli.command()
@click.argument("model")
@click.pass_obj
def sign(obj: Context, model: str) -> None:
    """Sign MODEL's versions and config with --signing-key (a repository published before
    the key was set): only when every file still matches its manifest and the config its
    seal; refused in one line naming the first that does not."""
    require_repository(obj)
    repository = ModelRepository(obj.storage(), signing_key=obj.signing_key)
    signed = repository.sign_published(validate_model_name(model))
    click.echo(f"{model}: signed {', '.join(signed)}")
