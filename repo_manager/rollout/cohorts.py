"""What ``set-weight --cohort`` means: the canary's weight inside a cohort and outside it.

The rule itself is ``routing/cohort.py``'s (the Router and the weighted public name read
it); here a person's words become the state's ``cohort`` and ``weights``, and the history
entry's words. Without ``--cohort`` the weight is everyone's outside the cohort and the
cohort stands (as an analysis step moves it); with a rule the weight is the canary's
inside the cohort and everyone else gets ``--others`` (0 by default); ``--cohort -``
clears it. Promote and rollback clear it (``retirement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repo_manager.errors import InvalidInputError
from repo_manager.rollout.ledger import KEEP, Keep
from repo_manager.rollout.settings import parse_weight
from repo_manager.routing.plan import compile_cohort
from repo_manager.state import RolloutState, cohort_words

__all__ = ["CLEAR", "WeightMove", "weight_move"]

#: ``--cohort -``: no cohort any more.
CLEAR = "-"


@dataclass(kw_only=True, frozen=True)
class WeightMove:
    """A ``set-weight``: the canary's weight outside the cohort, and the cohort (KEEP: as
    it stands, None: none)."""

    outside: int
    cohort: dict[str, Any] | Keep | None

    def action(self, state: RolloutState) -> str:
        """The history's words for this move, once applied to ``state``."""
        if state.cohort is None:
            return f"set-weight {self.outside}%"
        return f"set-weight {cohort_words(state.cohort)}, {self.outside}% outside it"


def weight_move(percent: str | int, cohort: str | None, others: str | int | None) -> WeightMove:
    """``set-weight PERCENT [--cohort RULE|-] [--others PERCENT]`` checked, or one line."""
    weight = parse_weight(percent)
    if cohort is None or cohort.strip() == CLEAR:
        if others is not None:
            raise InvalidInputError("--others gives the weight outside a cohort: add --cohort RULE")
        return WeightMove(outside=weight, cohort=KEEP if cohort is None else None)
    rule = compile_cohort(cohort)
    outside = 0 if others is None else parse_weight(others)
    return WeightMove(outside=outside, cohort={"rule": str(rule), "weight": weight})
