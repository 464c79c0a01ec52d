"""The moves a person makes: ``set-weight``, ``promote``, ``rollback``, ``policy``."""

from __future__ import annotations

import click

from repo_manager.cli.app import Context, cli, require_repository
from repo_manager.cli.options import drain_option, reason_option, servers_options
from repo_manager.errors import InvalidInputError
from repo_manager.rollout import parse_policy
from repo_manager.rollout.cohorts import weight_move
from repo_manager.rollout.ledger import KEEP
from repo_manager.rollout.server_moves import servers_words
from repo_manager.server_selection import parse_names
from repo_manager.state import RolloutState, cohort_words
from repo_manager.unpinned import MODES, WEIGHTED


@cli.command("set-weight", context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.argument("percent")
@click.option(
    "--cohort",
    default=None,
    metavar="RULE",
    help="Send requests whose attributes match RULE to the canary at PERCENT, e.g. "
    "'line in (3,4) and device=crane' or 'hour in 0..5 tz Europe/Berlin'; everyone else "
    "gets --others. '-' clears the cohort. Without it, PERCENT is the weight outside "
    "the cohort and the cohort stands.",
)
@click.option(
    "--others",
    default=None,
    metavar="PERCENT",
    help="With --cohort RULE: the canary's weight for requests outside the cohort (0).",
)
@servers_options
@reason_option
@click.pass_obj
def set_weight(
    obj: Context,
    model: str,
    percent: str,
    cohort: str | None,
    others: str | None,
    servers: str | None,
    exclude: str | None,
    reason: str,
) -> None:
    """Give the canary PERCENT of the traffic (of the cohort's, with --cohort; with
    --servers/--exclude, those servers: it is loaded on servers it is added to before
    they get traffic)."""
    weight_move(percent, cohort, others)  # bad input: one line before the repository
    names = parse_names(servers, "--servers"), parse_names(exclude, "--exclude")
    require_repository(obj)
    manager = obj.manager()
    chosen = KEEP if names == (None, None) else manager.server_moves.select(*names)
    state = manager.set_weight(
        model, percent, reason=reason, cohort=cohort, others=others, servers=chosen
    )
    outside = state.weights.get(state.canary, 0) if state.canary else 0
    words = f"canary {state.canary} at {outside}%, stable {state.stable} at {100 - outside}%"
    if state.cohort is not None:
        words = f"canary {state.canary} {cohort_words(state.cohort)}, {outside}% of the others"
    if state.servers is not None:
        words += f"; canary {servers_words(state.servers)}"
    click.echo(f"{model}: {words}")


@cli.command()
@click.argument("model")
@drain_option
@reason_option
@click.pass_obj
def promote(obj: Context, model: str, drain_seconds: float | None, reason: str) -> None:
    """Make the canary stable at 100% and unload the old stable."""
    require_repository(obj)
    with obj.progress.stage(f"promote {model}"):
        state = obj.manager(drain_seconds=drain_seconds).promote(model, reason=reason)
    click.echo(f"{model}: version {state.stable} promoted to stable")


@cli.command()
@click.argument("model")
@drain_option
@reason_option
@click.pass_obj
def rollback(obj: Context, model: str, drain_seconds: float | None, reason: str) -> None:
    """Send all traffic to stable and unload the canary."""
    require_repository(obj)
    with obj.progress.stage(f"rollback {model}"):
        state = obj.manager(drain_seconds=drain_seconds).rollback(model, reason=reason)
    click.echo(f"{model}: rolled back to stable version {state.stable}")


@cli.command()
@click.argument("model")
@click.option("--latest", type=int, default=None, help="Also keep the latest N versions loaded.")
@click.option("--all", "all_versions", is_flag=True, help="Keep every version loaded.")
@click.option("--specific", default=None, help="Also keep these versions loaded: V[,V...].")
@click.option(
    "--clear",
    is_flag=True,
    help="Keep no extra version loaded (only the rollout's own); unloads the others.",
)
@click.option(
    "--unpinned",
    type=click.Choice(MODES),
    default=None,
    help="What the public name does with requests that name no version: answer from "
    "stable (the default) or split them by the rollout's weights, inside Triton.",
)
@click.option(
    "--shadow",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="With --unpinned weighted: share (0..1) of the unpinned requests stable answers "
    "that are also sent to the canary in the background, for the analysis (0: none).",
)
@click.pass_obj
def policy(
    obj: Context,
    model: str,
    latest: int | None,
    all_versions: bool,
    specific: str | None,
    clear: bool,
    unpinned: str | None,
    shadow: float | None,
) -> None:
    """Set which versions Triton keeps loaded besides stable and canary (--clear: none),
    and what the public name does with requests that name no version."""
    versions_given = latest is not None or all_versions or specific is not None
    if clear and versions_given:
        raise InvalidInputError("give --clear or one of --latest, --all, --specific, not both")
    change = clear or versions_given or (unpinned is None and shadow is None)
    document = (
        parse_policy(latest=latest, all_versions=all_versions, specific=specific)
        if versions_given or (unpinned is None and shadow is None and not clear)
        else None
    )
    require_repository(obj)
    manager = obj.manager()
    if change:
        state = manager.set_policy(model, document)
        click.echo(f"{model}: loaded versions {','.join(manager.desired_versions(state))}")
    if unpinned is not None or shadow is not None:
        state = manager.set_unpinned(model, unpinned, shadow=shadow)
        click.echo(f"{model}: unpinned requests {_unpinned_words(state)}")


def _unpinned_words(state: RolloutState) -> str:
    if state.unpinned != WEIGHTED:
        return "are answered by stable"
    mirrored = state.unpinned_shadow
    shadow = f"; {mirrored:g} of stable's mirrored to the canary" if mirrored else ""
    return f"follow the rollout's weights{shadow}"
