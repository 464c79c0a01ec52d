"""Decisions posted to webhooks: one JSON per recorded decision, in order, with the commands;
a receiver that is down or slow delays no move; secrets in URLs are never shown."""

from __future__ import annotations

import time
from typing import Any

import pytest
from click.testing import CliRunner

from repo_manager.cli import cli
from repo_manager.notifications import FAILURES_KEY, Notifier, Target, read_failures, redact, render
from repo_manager.server import free_port
from tests.eventually import eventually
from tests.unit.test_rollout_ordering import Harness
from tests.unit.test_rollout_ordering import manager as manager
from tests.webhook import receiver


def notifying(harness: Harness, url: str, **options: Any) -> Notifier:
    rollout, _, storage = harness
    notifier = Notifier([Target.parse(url)], storage=storage, repository="/srv/models", **options)
    rollout.recorded = notifier.recorded
    return notifier


def test_every_decision_is_posted_once_in_order_with_the_commands(manager: Harness) -> None:
    with receiver() as (url, bodies):
        notifier = notifying(manager, url)
        rollout = manager[0]
        rollout.set_weight("m", 30)
        rollout.set_weight("m", 60, reason="looks good")
        rollout.promote("m")
        notifier.close(timeout=5)
    assert [b["action"] for b in bodies] == [
        "set-weight 30%",
        "set-weight 60%",
        "promote",
        "promoted",
    ]
    assert bodies[1]["reason"] == "looks good" and bodies[1]["weights"] == {"1": 40, "2": 60}
    assert bodies[0]["commands"] == {
        "status": "repo-manager --repository /srv/models status m",
        "promote": "repo-manager --repository /srv/models promote m",
        "rollback": "repo-manager --repository /srv/models rollback m",
    }
    assert bodies[-1]["stable"] == "2" and "promote" not in bodies[-1]["commands"]
    assert notifier.sent == 4 and notifier.dropped == 0


def test_a_receiver_that_is_down_delays_no_move_and_status_says_so(manager: Harness) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/T000/SECRET"  # nobody listens
    notifier = notifying(manager, url, backoff=0.05)
    started = time.monotonic()
    manager[0].set_weight("m", 30)
    manager[0].set_weight("m", 40)
    assert time.monotonic() - started < 1.0
    assert eventually(lambda: notifier.dropped == 2, timeout=10)
    notifier.close()
    failure = read_failures(manager[2])
    assert failure is not None and failure["target"] == f"{redact(url)}"
    assert "SECRET" not in (manager[2].read_bytes(FAILURES_KEY) or b"").decode()


def test_a_slow_receiver_delays_no_move_and_gets_every_event_in_order(manager: Harness) -> None:
    with receiver(delay=0.5) as (url, bodies):
        notifier = notifying(manager, url)
        started = time.monotonic()
        for weight in (20, 30, 40):
            manager[0].set_weight("m", weight)
        assert time.monotonic() - started < 1.0  # three posts take 1.5 s
        notifier.close(timeout=5)
    assert [b["action"] for b in bodies] == ["set-weight 20%", "set-weight 30%", "set-weight 40%"]


def test_an_exit_waits_a_bounded_time_then_drops_and_counts(manager: Harness) -> None:
    with receiver(delay=2.0) as (url, _):
        notifier = notifying(manager, url)
        for weight in (20, 30, 40):
            manager[0].set_weight("m", weight)
        started = time.monotonic()
        notifier.close(timeout=0.3)
        assert time.monotonic() - started < 1.0
    assert notifier.dropped >= 2


def test_slack_wecom_and_dingtalk_get_their_documented_bodies() -> None:
    event = {
        "model": "m",
        "action": "analysis: check failed at 10% (1/2)",
        "reason": "max_error_rate[triton]: 0.2 (bound 0.01) FAILED",
        "phase": "analyzing",
        "weights": {"1": 90, "2": 10},
        "gates": [{"name": "max_error_rate[triton]", "value": 0.2, "bound": 0.01, "passed": False}],
        "commands": {"rollback": "repo-manager rollback m"},
    }
    assert "`repo-manager rollback m`" in render(event, "slack")["text"]
    wecom = render(event, "wecom")
    assert wecom["msgtype"] == "markdown" and "failed gate" in wecom["markdown"]["content"]
    dingtalk = render(event, "dingtalk")
    assert dingtalk["markdown"]["title"].startswith("m: analysis")
    assert render(event, "json") == event
    assert Target.parse("https://hooks.slack.com/services/T/B/X").format == "slack"
    assert Target.parse("https://oapi.dingtalk.com/robot/send?access_token=X").format == "dingtalk"
    assert Target.parse("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=X").format == "wecom"
    assert Target.parse("slack+http://127.0.0.1:9/x").format == "slack"


def test_a_bad_webhook_is_refused_in_one_line_without_its_secret() -> None:
    result = CliRunner().invoke(
        cli, ["--notify", "ftp://hooks.example.com/SECRET", "status"], standalone_mode=False
    )
    assert result.exception is not None
    message = str(result.exception)
    assert "not an http(s) URL" in message and "SECRET" not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/…"),
        ("https://oapi.dingtalk.com/robot/send?access_token=abc", "https://oapi.dingtalk.com/…"),
        ("http://user:pw@127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_redact_keeps_only_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact(url) == shown
