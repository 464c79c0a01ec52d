"""Every decision the manager records, posted as JSON to webhooks (``--notify URL``).

Each recorded transition (publish, an analysis or guard verdict, promote, rollback, what a
reconcile pass finished) becomes one event: the model, the action and why, phase, versions,
weights, the gates behind a verdict, and the exact commands that promote or roll back the
canary. Formats: a generic JSON webhook, Slack incoming webhooks (``{"text"}``), WeCom and
DingTalk group robots (their documented ``msgtype: markdown`` bodies); picked from the URL's
host, or forced with a ``slack+``/``wecom+``/``dingtalk+``/``json+`` prefix.

Delivery never blocks or fails a move: each target has its own thread and a bounded queue;
a failed post is retried with backoff and, after ``attempts``, dropped and counted; a
full queue drops too. The last failure is written beside the states
(``FAILURES_KEY``), so ``status`` says when notifications fail. A webhook's URL carries its
secret (a Slack path, a DingTalk ``access_token``): only ``redact``'s form is ever shown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from repo_manager.errors import InvalidInputError, RepoManagerError
from repo_manager.links import LinkSigner
from repo_manager.state import RolloutState
from repo_manager.storage import Storage

__all__ = [
    "FAILURES_KEY",
    "FORMATS",
    "Notifier",
    "Target",
    "decision_event",
    "read_failures",
    "redact",
    "render",
]

logger = logging.getLogger(__name__)

FORMATS = ("json", "slack", "wecom", "dingtalk")
#: Hosts whose format is known without a prefix.
_HOSTS = {
    "hooks.slack.com": "slack",
    "qyapi.weixin.qq.com": "wecom",
    "oapi.dingtalk.com": "dingtalk",
}
#: The last failed delivery of any process (a root object: Triton ignores it).
FAILURES_KEY = ".repo-manager.notifications.failures"

Post = Callable[[str, bytes, float], None]


def redact(url: str) -> str:
    """``scheme://host[:port]/…``: the part of a webhook URL that is no secret."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    more = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{more}"


@dataclass(kw_only=True, frozen=True)
class Target:
    """One webhook: where to post, and in which format."""

    url: str
    format: str

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"--notify {redact(self.url)}: not an http(s) URL")
        if self.format not in FORMATS:
            raise InvalidInputError(f"--notify: unknown format {self.format!r} ({FORMATS})")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``[FORMAT+]URL``; without a prefix the format follows the host (else json)."""
        prefix, plus, rest = text.partition("+")
        if plus and prefix in FORMATS:
            return cls(url=rest, format=prefix)
        host = urllib.parse.urlsplit(text).hostname or ""
        return cls(url=text, format=_HOSTS.get(host, "json"))

    @property
    def shown(self) -> str:
        return redact(self.url)


def decision_event(
    state: RolloutState, *, repository: str, links: LinkSigner | None = None
) -> dict[str, Any]:
    """The event of the state's last recorded transition (with signed one-click links for
    a person's decision when ``links`` can sign them)."""
    last = state.history[-1]
    analysis = (last.details or {}).get("analysis", {})
    cli = f"repo-manager --repository {repository}"
    commands = {"status": f"{cli} status {state.model}"}
    if state.canary is not None:
        commands["promote"] = f"{cli} promote {state.model}"
        commands["rollback"] = f"{cli} rollback {state.model}"
    held = state.analysis or {}
    if held.get("waiting") is not None:  # an analysis waits for a person
        commands["approve"] = f"{cli} approve {state.model}"
        commands["reject"] = f"{cli} reject {state.model}"
    if held.get("paused_by") is not None:
        commands["resume"] = f"{cli} resume {state.model}"
    clicks = {}
    if links is not None and state.canary is not None:
        clicks = {
            action: links.sign(state.model, state.canary, action)
            for action in ("approve", "reject", "resume")
            if action in commands
        }
    return {
        "model": state.model,
        "action": last.action,
        "reason": last.reason,
        "at": last.at,
        "who": last.who,
        "phase": state.phase.value,
        "stable": state.stable,
        "canary": state.canary,
        "weights": dict(state.weights),
        "generation": state.generation,
        "gates": analysis.get("gates", []),
        "commands": commands,
        **({"links": clicks} if clicks else {}),
    }


def _text(event: Mapping[str, Any]) -> str:
    weights = ", ".join(f"v{v} {w}%" for v, w in sorted(event.get("weights", {}).items()))
    lines = [f"**{event['model']}**: {event['action']}"]
    if event.get("reason"):
        lines.append(str(event["reason"]))
    lines.append(f"phase {event.get('phase')}; {weights}")
    failed = [g for g in event.get("gates", []) if not g.get("passed", True)]
    lines += [f"failed gate {g['name']}: {g.get('value')} (bound {g.get('bound')})" for g in failed]
    lines += [f"{name}: `{command}`" for name, command in event.get("commands", {}).items()]
    lines += [f"[{name}]({url})" for name, url in event.get("links", {}).items()]
    return "\n".join(lines)


def render(event: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The body one format's receiver expects."""
    if fmt == "slack":
        return {"text": _text(event).replace("**", "*")}
    if fmt == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": _text(event)}}
    if fmt == "dingtalk":
        title = f"{event['model']}: {event['action']}"
        return {"msgtype": "markdown", "markdown": {"title": title, "text": _text(event)}}
    return dict(event)


def _post(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()


@dataclass
class _Channel:
    """One target's queue, thread and counts."""

    target: Target
    queue: queue.Queue[dict[str, Any]]
    sent: int = 0
    dropped: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)


class Notifier:
    """Posts events to every target in the background (see the module docstring)."""

    def __init__(
        self,
        targets: list[Target],
        *,
        storage: Storage | None = None,
        repository: str = "",
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 1000,
        post: Post = _post,
        links: LinkSigner | None = None,
    ) -> None:
        """``post`` is the transport (a test passes its own); ``storage`` is where the
        last failure is written for ``status``."""
        self.storage = storage
        self.repository = repository
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._post = post
        self.links = links
        self._stop = threading.Event()
        self.channels = [_Channel(target=t, queue=queue.Queue(queue_size)) for t in targets]
        for channel in self.channels:
            channel.thread = threading.Thread(
                target=self._deliver, args=(channel,), name="notify", daemon=True
            )
            channel.thread.start()

    def recorded(self, state: RolloutState) -> None:
        """A state was persisted: its last transition is the decision to announce."""
        if state.history:
            self.send(decision_event(state, repository=self.repository, links=self.links))

    def send(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every target; never blocks (a full queue drops it)."""
        for channel in self.channels:
            try:
                channel.queue.put_nowait(event)
            except queue.Full:
                self._dropped(channel, "queue full")

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self.channels)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.channels)

    def close(self, timeout: float = 2.0) -> None:
        """Give queued events ``timeout`` seconds to go out, then stop (what is left is
        dropped and counted: a command's exit waits at most that long)."""
        deadline = time.monotonic() + timeout
        for channel in self.channels:
            while channel.queue.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.01)
        self._stop.set()
        for channel in self.channels:
            while True:
                try:
                    channel.queue.get_nowait()
                except queue.Empty:
                    break
                self._dropped(channel, "not delivered before exit")
                channel.queue.task_done()

    def _deliver(self, channel: _Channel) -> None:
        while not self._stop.is_set():
            try:
                event = channel.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._post_with_retries(channel, event)
            finally:
                channel.queue.task_done()

    def _post_with_retries(self, channel: _Channel, event: dict[str, Any]) -> None:
        body = json.dumps(render(event, channel.target.format)).encode()
        error = ""
        for attempt in range(self.attempts):
            try:
                self._post(channel.target.url, body, self.timeout)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                error = _one_line(exc)
                if self._stop.wait(self.backoff * 2**attempt):
                    break
                continue
            channel.sent += 1
            return
        self._dropped(channel, error)

    def _dropped(self, channel: _Channel, error: str) -> None:
        channel.dropped += 1
        logger.warning("notification to %s dropped: %s", channel.target.shown, error)
        if self.storage is None:
            return
        failure = {
            "target": channel.target.shown,
            "error": error,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dropped_by_this_process": channel.dropped,
        }
        # The storage failing too: the log line above is what is left.
        with contextlib.suppress(RepoManagerError):
            self.storage.write_bytes_atomic(FAILURES_KEY, json.dumps(failure).encode())


def _one_line(exc: BaseException) -> str:
    """An error's first line, with any URL in it redacted (urllib names the URL)."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return " ".join(redact(w) if "://" in w else w for w in text.split())


def read_failures(storage: Storage) -> dict[str, Any] | None:
    """The last failed delivery recorded in ``storage`` (None: none)."""
    data = storage.read_bytes(FAILURES_KEY)
    if not data:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
