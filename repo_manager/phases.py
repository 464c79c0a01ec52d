"""Rollout phases and the one table of moves allowed between them.

Transient phases (``promoting``, ``rolling_back``) are persisted *before* the manager acts
on Triton, so a manager that dies mid-move leaves a phase that ``reconcile`` completes.

    (none) ──publish v1──▶ initialized ──publish──▶ progressing ──set-weight──▶ progressing
                                 ▲                       │   │
                 succeeded ◀── promoting ◀──promote──────┘   └──rollback──▶ rolling_back
                     │                                                          │
                     └──────publish──▶ progressing      rolled_back ◀───────────┘

    progressing ──rollout──▶ analyzing ──advance (weight step)──▶ analyzing
    analyzing ──advance past the last step──▶ promoting
    analyzing ──advance at the failed-check threshold──▶ rolling_back
    analyzing ──set-weight (a person takes over)──▶ progressing
"""

from __future__ import annotations

import enum

from repo_manager.errors import IllegalTransitionError

__all__ = ["ALLOWED_TRANSITIONS", "Phase", "check_transition"]


class Phase(enum.StrEnum):
    """Where a model's rollout stands."""

    INITIALIZED = "initialized"  # one version, stable at 100%, never rolled out
    PROGRESSING = "progressing"  # a canary is loaded beside stable and gets its weight
    ANALYZING = "analyzing"  # progressive analysis moves the canary's weight step by step
    PROMOTING = "promoting"  # canary being made stable; old stable being drained/unloaded
    SUCCEEDED = "succeeded"  # last canary was promoted; stable alone at 100%
    ROLLING_BACK = "rolling_back"  # canary being drained and unloaded
    ROLLED_BACK = "rolled_back"  # last canary was rolled back; stable alone at 100%


#: Every legal move; anything else raises IllegalTransitionError.
ALLOWED_TRANSITIONS: dict[Phase | None, frozenset[Phase]] = {
    None: frozenset({Phase.INITIALIZED}),
    Phase.INITIALIZED: frozenset({Phase.PROGRESSING}),
    Phase.PROGRESSING: frozenset(
        {Phase.PROGRESSING, Phase.ANALYZING, Phase.PROMOTING, Phase.ROLLING_BACK}
    ),
    Phase.ANALYZING: frozenset(
        {Phase.ANALYZING, Phase.PROGRESSING, Phase.PROMOTING, Phase.ROLLING_BACK}
    ),
    Phase.PROMOTING: frozenset({Phase.SUCCEEDED}),
    Phase.SUCCEEDED: frozenset({Phase.PROGRESSING}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK}),
    Phase.ROLLED_BACK: frozenset({Phase.PROGRESSING}),
}

#: Phases in which exactly one version serves and no canary exists.
STEADY_PHASES = frozenset({Phase.INITIALIZED, Phase.SUCCEEDED, Phase.ROLLED_BACK})


def check_transition(source: Phase | None, target: Phase, *, action: str) -> None:
    """Raise IllegalTransitionError unless ``source -> target`` is in the table."""
    if target not in ALLOWED_TRANSITIONS.get(source, frozenset()):
        where = source.value if source else "no rollout"
        if target in (Phase.PROMOTING, Phase.ROLLING_BACK) and source in STEADY_PHASES:
            raise IllegalTransitionError(f"cannot {action}: there is no canary (phase {where})")
        raise IllegalTransitionError(
            f"cannot {action}: phase {where} does not allow moving to {target.value}"
        )
