"""The watch server's HTTP: request parsing, answers, the limits that keep the manager up,
and error logging that a flood of clients cannot turn into a flood of lines.

A long-running manager is reachable by whatever reaches its port. Each connection is a
descriptor, so the server holds at most ``WatchLimits.max_connections`` (and fewer
before a request has arrived: ``max_pending``) and answers the rest 503 at once: the
process never runs out of descriptors (measured before these limits: 1,100 idle
connections at a 1,024 limit made ``reconcile --watch`` exit on "Too many open files").
"""

from __future__ import annotations

import logging
import math
import resource
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ErrorLog",
    "Request",
    "WatchLimits",
    "parse_request",
    "raise_descriptor_limit",
    "response",
    "watch_arguments",
]

#: Descriptors kept for everything else the manager opens (storage and Triton clients,
#: its log, the executor's work) when the connection limit is fitted to the process's.
DESCRIPTOR_RESERVE = 256
#: Longest ``wait`` of a long poll, in seconds.
MAX_WAIT = 300.0


@dataclass(kw_only=True, frozen=True)
class WatchLimits:
    """What one watch server holds at most (each checked when a connection arrives)."""

    #: Open connections, subscribers included; fitted below the descriptor limit at start.
    max_connections: int = 4096
    #: Connections that have not sent a whole request head yet (idle or slow ones): a
    #: share of the connections, so that they can never take every slot from Routers.
    max_pending: int = 1024
    #: Subscribed Routers (event streams and long polls) at most.
    max_subscribers: int = 4096
    #: Seconds a new connection has to send its request head.
    head_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pending", "max_subscribers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.head_timeout > 0:
            raise ValueError("head_timeout must be positive")

    def fitted(self) -> WatchLimits:
        """These limits, lowered to what the process's descriptor limit can hold."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = self.max_connections
        if soft != resource.RLIM_INFINITY:
            room = max(1, min(room, soft - DESCRIPTOR_RESERVE))
        return WatchLimits(
            max_connections=room,
            max_pending=min(self.max_pending, room),
            max_subscribers=min(self.max_subscribers, room),
            head_timeout=self.head_timeout,
        )


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to its hard one (the default soft
    limit, often 1,024, is what a long-running server outgrows); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a hard limit above what the kernel allows
            pass
    return int(soft)


@dataclass(kw_only=True, frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    close: bool


def parse_request(head: bytes) -> Request | None:
    """The request line and the one header that matters (Connection); None: malformed."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    connection = headers.get("connection", "")
    close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
    url = urlsplit(target)
    return Request(method=method, path=url.path, query=parse_qs(url.query), close=close)


def watch_arguments(request: Request) -> tuple[int, float | None] | str:
    """``after`` (the generation the client holds; -1: none) and ``wait`` (a long poll's
    seconds; None: a stream), or what is wrong with them. NaN, infinities and negative
    values are refused: a NaN deadline once made a long poll spin a core for ever."""
    try:
        after = int(request.query.get("after", ["-1"])[0])
    except ValueError:
        return "after must be an integer generation"
    if after < -1:
        return "after must be -1 (no table yet) or a generation"
    if "wait" not in request.query:
        return after, None
    try:
        wait = float(request.query["wait"][0])
    except ValueError:
        return "wait must be a number of seconds"
    if not math.isfinite(wait) or not 0 <= wait <= MAX_WAIT:
        return f"wait must be between 0 and {MAX_WAIT:g} seconds"
    return after, wait


def response(
    status: int, body: bytes, content_type: str, *, close: bool, head: bool = False
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


#: The answer to a connection beyond the limits (sent, then the connection is closed).
BUSY = response(503, b"busy: too many connections\n", "text/plain", close=True)


class ErrorLog:
    """One log line per kind of error per ``interval`` seconds, with how many were
    folded into it, instead of a line (or a traceback) per connection."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def __call__(self, kind: str, detail: str) -> bool:
        """Log ``kind`` unless it was logged within the interval; True when logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._folded[kind] = self._folded.get(kind, 0) + 1
                return False
            folded = self._folded.pop(kind, 0)
            self._last[kind] = now
        more = f" (and {folded} more in the last {self.interval:g}s)" if folded else ""
        self.logger.warning("watch: %s: %s%s", kind, detail, more)
        return True
