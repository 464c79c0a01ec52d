"""The ``repo-manager`` command line: one module per group of commands.

app.py         the group, its global options, the entry point (one line per error)
options.py     options several commands share; the signal helper; manager metrics
render.py      pure text renderers of the answers
serving.py     serve, traffic
initialize.py  init (the repository made servable before any Triton starts)
exporting.py   export
publishing.py  publish, validate
analysis.py    rollout (the progressive analysis; also publish --auto)
moves.py       set-weight, promote, rollback, policy
approval.py    approve, reject, pause, resume (a person in the loop of an analysis)
status.py      status (watch.py: its live view)
history.py     history (text, JSON, --plot)
reconcile.py   reconcile [--watch]
"""

from __future__ import annotations

# Importing a command module registers its commands on the group.
from repo_manager.cli import (  # noqa: F401
    analysis,
    approval,
    exporting,
    history,
    initialize,
    moves,
    publishing,
    reconcile,
    serving,
    status,
)
from repo_manager.cli.app import cli, main

__all__ = ["cli", "main"]
