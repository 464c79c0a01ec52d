from __future__ import annotations

import pytest

from repo_manager.compat import TRITON_TENSORRT, check_plan_compatible, tensorrt_for_triton
from repo_manager.errors import IncompatibleModelError

PLAN = {"format": "plan", "tensorrt": "10.5.0.18", "compute_capability": "9.0"}


def test_the_embedded_triton_release_is_in_the_table() -> None:
    assert tensorrt_for_triton("2.51.0") == "10.5.0"
    assert TRITON_TENSORRT["2.51.0"][0] == "24.10"


def test_a_plan_of_the_servers_tensorrt_passes_whatever_its_build_number() -> None:
    check_plan_compatible(PLAN, {"a:8001": "2.51.0", "b:8001": "2.51.0"})


def test_a_plan_of_another_tensorrt_is_refused_naming_the_release_to_build_in() -> None:
    with pytest.raises(IncompatibleModelError, match=r"TensorRT 10\.8\.0 .*24\.10.*b:8001"):
        check_plan_compatible({**PLAN, "tensorrt": "10.8.0.43"}, {"b:8001": "2.51.0"})


def test_one_mismatching_server_in_a_fleet_is_enough_to_refuse() -> None:
    with pytest.raises(IncompatibleModelError, match="c:8001"):
        check_plan_compatible(PLAN, {"a:8001": "2.51.0", "c:8001": "2.54.0"})


def test_an_unknown_triton_release_is_refused_rather_than_guessed() -> None:
    with pytest.raises(IncompatibleModelError, match="not in the TensorRT compatibility table"):
        check_plan_compatible(PLAN, {"a:8001": "2.99.0"})


def test_force_and_non_plan_formats_skip_the_check() -> None:
    check_plan_compatible({**PLAN, "tensorrt": "10.8.0"}, {"a:8001": "2.51.0"}, force=True)
    check_plan_compatible({"format": "python"}, {"a:8001": "2.99.0"})
