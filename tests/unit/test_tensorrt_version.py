"""The plan builder accepts exactly the TensorRT major that the supported Tritons ship."""

from __future__ import annotations

import pytest

from export.tensorrt import SUPPORTED_TENSORRT_MAJOR, check_tensorrt_version
from repo_manager.compat import TRITON_TENSORRT
from repo_manager.errors import ExportError


@pytest.mark.parametrize("version", ["10.3.0", "10.5.0.18", "10.11.0.33"])
def test_tensorrt_10_builds_plans(version: str) -> None:
    check_tensorrt_version(version)


@pytest.mark.parametrize("version", ["8.6.1", "11.4.0.106"])
def test_other_tensorrt_majors_are_refused_with_one_line(version: str) -> None:
    with pytest.raises(ExportError, match=rf"TensorRT {version} is not supported") as caught:
        check_tensorrt_version(version)
    assert "\n" not in str(caught.value)


def test_every_triton_in_the_compatibility_table_ships_the_supported_major() -> None:
    majors = {tensorrt.split(".")[0] for _release, tensorrt in TRITON_TENSORRT.values()}
    assert majors == {SUPPORTED_TENSORRT_MAJOR}
