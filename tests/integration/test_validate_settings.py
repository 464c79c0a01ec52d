"""``validate`` and ``publish --golden`` reach the repository and the servers with every
setting the command was given: here an S3 repository named by ``--s3-endpoint`` alone
(no AWS_ENDPOINT_URL in the environment). TLS and headers: tests/integration/test_tls.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import S3_SECRET, S3Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_validate_and_the_golden_gate_read_an_s3_repository_given_by_s3_endpoint_only(
    fleet1: S3Fleet, trained_detector: Path, golden_set: Path
) -> None:
    assert "AWS_ENDPOINT_URL" not in os.environ  # the endpoint comes from --s3-endpoint only
    fleet1.publish("shapes", "1", trained_detector)
    gated = fleet1.publish("shapes", "2", trained_detector, "--golden", str(golden_set))
    assert "published as canary at 10%" in gated.stdout, gated.stderr
    done = fleet1.cli("validate", "shapes", "2", "--golden", str(golden_set), "--json")
    report = json.loads(done.stdout)
    assert report["passed"] and report["labelled"] == report["images"] > 0
    assert report["candidate"]["agreement"] == pytest.approx(1.0)
    assert S3_SECRET not in done.stdout + done.stderr + gated.stdout + gated.stderr
