"""Gate bounds are typed, ranged and documented; nothing is evaluated as an expression."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from repo_manager.errors import InvalidGateError
from repo_manager.gates import GateResult, GoldenGates, LiveGates, parse_gate_overrides


def test_overrides_are_parsed_by_field_type() -> None:
    gates = parse_gate_overrides(GoldenGates(), ["max_map50_drop=0.1", "min-agreement=0.5"])
    assert gates.max_map50_drop == 0.1 and gates.min_agreement == 0.5
    live = parse_gate_overrides(LiveGates(), ["min_requests=3"])
    assert live.min_requests == 3 and isinstance(live.min_requests, int)


@pytest.mark.parametrize(
    "override",
    [
        "nope=1",
        "max_map50_drop",
        "max_map50_drop=abc",
        "min_agreement=2",
        "max_error_rate=nan",
        "max_latency_ratio=__import__('os')",
    ],
)
def test_unknown_or_out_of_range_overrides_are_bad_input(override: str) -> None:
    with pytest.raises(InvalidGateError) as raised:
        parse_gate_overrides(GoldenGates(), [override])
    assert raised.value.exit_code == 2


def test_every_gate_field_documents_its_default() -> None:
    import inspect

    for cls in (GoldenGates, LiveGates):
        source = inspect.getsource(cls)
        for name, value in vars(cls()).items():
            comment = source[: source.index(f"    {name}: ")].rsplit('"""', 1)[-1]
            comment = comment.rsplit(": float", 1)[-1].rsplit(": int", 1)[-1]
            assert f"Default {value}." in comment, name


def test_a_gate_without_a_value_is_skipped_not_failed() -> None:
    assert GateResult.at_most("map50_drop", None, 0.05).passed
    assert not GateResult.at_least("agreement", 0.5, 0.8).passed
    assert "FAILED" in GateResult.at_least("agreement", 0.5, 0.8).describe()


@pytest.mark.parametrize(
    "make",
    [
        lambda: LiveGates(max_error_rate=2.0),
        lambda: LiveGates(min_requests=0),
        lambda: GoldenGates(max_latency_ratio=float("inf")),
        lambda: GoldenGates(min_agreement=-0.1),
    ],
)
def test_gates_check_their_ranges_however_they_are_made(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidGateError, match="outside"):
        make()
