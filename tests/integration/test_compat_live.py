"""The plan compatibility guard reads the real server's release from its metadata."""

from __future__ import annotations

import pytest

from repo_manager.compat import check_plan_compatible
from repo_manager.errors import IncompatibleModelError
from repo_manager.triton import TritonFleet
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_plan_guard_uses_the_release_the_server_reports(stack: Stack) -> None:
    servers = TritonFleet([stack.url]).server_versions()
    assert servers == {stack.url: "2.51.0"}
    check_plan_compatible({"format": "plan", "tensorrt": "10.5.0.18"}, servers)
    with pytest.raises(IncompatibleModelError, match=r"24\.10"):
        check_plan_compatible({"format": "plan", "tensorrt": "10.8.0.43"}, servers)
