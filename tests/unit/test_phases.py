from __future__ import annotations

import pytest

from repo_manager.errors import IllegalTransitionError
from repo_manager.phases import ALLOWED_TRANSITIONS, Phase, check_transition


def test_every_phase_has_a_row_in_the_transition_table() -> None:
    assert set(Phase) <= set(ALLOWED_TRANSITIONS)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (None, Phase.INITIALIZED),
        (Phase.INITIALIZED, Phase.PROGRESSING),
        (Phase.PROGRESSING, Phase.PROGRESSING),
        (Phase.PROGRESSING, Phase.PROMOTING),
        (Phase.PROMOTING, Phase.SUCCEEDED),
        (Phase.PROGRESSING, Phase.ROLLING_BACK),
        (Phase.ROLLING_BACK, Phase.ROLLED_BACK),
        (Phase.SUCCEEDED, Phase.PROGRESSING),
        (Phase.ROLLED_BACK, Phase.PROGRESSING),
    ],
)
def test_allowed_moves_pass(source: Phase | None, target: Phase) -> None:
    check_transition(source, target, action="test")


@pytest.mark.parametrize("steady", [Phase.INITIALIZED, Phase.SUCCEEDED, Phase.ROLLED_BACK])
def test_promote_without_canary_says_there_is_no_canary(steady: Phase) -> None:
    with pytest.raises(IllegalTransitionError, match="no canary"):
        check_transition(steady, Phase.PROMOTING, action="promote")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (Phase.PROMOTING, Phase.PROGRESSING),
        (Phase.ROLLING_BACK, Phase.SUCCEEDED),
        (None, Phase.PROGRESSING),
        (Phase.PROGRESSING, Phase.INITIALIZED),
    ],
)
def test_illegal_moves_raise(source: Phase | None, target: Phase) -> None:
    with pytest.raises(IllegalTransitionError):
        check_transition(source, target, action="test")


def test_illegal_transition_exits_with_usage_code() -> None:
    assert IllegalTransitionError.exit_code == 2
