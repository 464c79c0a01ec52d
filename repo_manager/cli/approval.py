"""A person in the loop of an analysis: ``approve``, ``reject``, ``pause``, ``resume``."""

from __future__ import annotations

import click

from repo_manager.cli.app import Context, cli, require_repository
from repo_manager.cli.options import reason_option
from repo_manager.cli.render import transition_text

#: Each command, by the ``Approvals`` method it calls, with its help.
_DECISIONS = {
    "approve": "Move the canary to the weight its analysis waits to reach "
    "(--steps ...,pause,W or --approve-before W).",
    "reject": "Roll the canary back, whatever its analysis would decide.",
    "pause": "Hold the canary at its weight; the analysis keeps judging it (a failing one "
    "still rolls back).",
    "resume": "Let passed analysis steps move the canary on again.",
}


def _command(name: str, help_text: str) -> None:
    @click.argument("model")
    @reason_option
    @click.pass_obj
    def command(obj: Context, model: str, reason: str) -> None:
        require_repository(obj)
        manager = obj.manager()
        before = manager.state(model)
        with obj.progress.stage(f"{name} {model}"):
            state = getattr(manager.approvals, name)(model, reason=reason)
        # The decision and what it led to (a reject's rollback).
        added = state.generation - (before.generation if before else 0)
        for transition in state.history[-added:]:
            click.echo(transition_text(transition))

    command.__doc__ = help_text
    cli.command(name)(command)


for _name, _help in _DECISIONS.items():
    _command(_name, _help)
