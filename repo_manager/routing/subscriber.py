"""A Router's subscription to the manager's watch endpoint (server-sent events).

One daemon thread holds one HTTP stream to ``URL/watch/MODEL`` and hands every table it
receives to the Router's ``TableWatcher``, which installs it only when newer. When the
stream cannot be opened or ends (manager killed, restarted, network gone: the manager
sends a comment every 10 s, so silence longer than ``read_timeout`` counts as gone), the
thread says so once and tries again after a jittered, doubling delay, so that a fleet
does not reconnect in one burst. Standard library only: a gRPC client installs light.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import threading
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from repo_manager.errors import InvalidInputError
from repo_manager.state import RoutingTable

__all__ = ["WatchSubscriber", "check_watch_url"]

logger = logging.getLogger(__name__)

#: Seconds before the first reconnect attempt; it doubles up to ``retry_max``.
FIRST_RETRY = 0.5
#: Seconds to open the connection (a black-holed manager must not hold the thread long).
CONNECT_TIMEOUT = 3.0


class _Refused(Exception):
    """The endpoint answered, but not with an event stream."""


def check_watch_url(url: str) -> str:
    """``url`` when it is an ``http://`` or ``https://`` URL with a host, else one line."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            f"invalid watch URL {url!r}: expected http://HOST:PORT (the manager's metrics port)"
        )
    return url


class WatchSubscriber:
    """Follows ``model``'s routing table at ``url`` until ``close``."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        on_table: Callable[[RoutingTable], object],
        on_state: Callable[[bool, str], None],
        generation: Callable[[], int],
        retry_max: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        """``on_table`` gets every table received; ``on_state(True, "")`` when a stream
        opens and ``on_state(False, reason)`` when the stream is lost or the first attempt
        fails (not again for each retry while it stays down); ``generation()`` is the
        generation the Router holds (the manager then sends only a newer table)."""
        self.url = check_watch_url(url)
        self.model = model
        self.on_table = on_table
        self.on_state = on_state
        self.generation = generation
        self.retry_max = retry_max
        self.read_timeout = read_timeout
        #: True while a stream is open, False while down, None before the first attempt.
        self.connected: bool | None = None
        self._stop = threading.Event()
        self._connection: http.client.HTTPConnection | None = None
        #: The open stream's socket (http.client hands it to the response and forgets it).
        self._socket: socket.socket | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"repo-manager-watch-{model}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop following: ends the open stream (unblocking its read) and the thread."""
        self._stop.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        delay = FIRST_RETRY
        while not self._stop.is_set():
            try:
                self._follow()
                reason = "the manager ended the stream"
            except (OSError, http.client.HTTPException, _Refused) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                self._close_connection()
            if self._stop.is_set():
                return
            if self.connected is not False:
                if self.connected:
                    delay = FIRST_RETRY
                self.connected = False
                self.on_state(False, reason)
            else:
                logger.debug("watch %s for %s still unreachable: %s", self.url, self.model, reason)
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, self.retry_max)

    def _follow(self) -> None:
        """Open the stream and read it until it ends."""
        parts = urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = kind(parts.hostname or "", parts.port, timeout=CONNECT_TIMEOUT)
        self._connection = connection
        path = f"{parts.path.rstrip('/')}/watch/{quote(self.model)}?after={self.generation()}"
        connection.request("GET", path, headers={"Accept": "text/event-stream"})
        self._socket = connection.sock
        if self._socket is not None:
            self._socket.settimeout(self.read_timeout)
        response = connection.getresponse()
        kind_of = response.getheader("Content-Type", "")
        if response.status != 200 or not kind_of.startswith("text/event-stream"):
            raise _Refused(f"HTTP {response.status} {response.reason} ({kind_of or 'no type'})")
        self.connected = True
        self.on_state(True, "")
        data: list[bytes] = []
        while not self._stop.is_set():
            line = response.readline()
            if not line:
                return
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    self._dispatch(b"\n".join(data))
                data = []
            elif not line.startswith(b":"):  # a comment (keep-alive) carries nothing
                field, _, value = line.partition(b":")
                if field == b"data":
                    data.append(value[1:] if value.startswith(b" ") else value)

    def _dispatch(self, data: bytes) -> None:
        try:
            table = RoutingTable.from_document(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "watch %s sent an unreadable table for %s: %s", self.url, self.model, exc
            )
            return
        if table.model == self.model:
            self.on_table(table)

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        sock, self._socket = self._socket, None
        if connection is not None:
            connection.close()
        if sock is not None:
            sock.close()
