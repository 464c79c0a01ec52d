"""The long-running manager's HTTP port: ``/metrics`` for Prometheus and ``/watch/MODEL``,
where Routers subscribe to the routing table instead of each polling storage.

``GET /watch/MODEL[?after=G]`` is a server-sent-events stream: one ``table`` event (the
table as JSON, its generation as the event id) whenever a table newer than the last one
sent exists, the first one at once when newer than ``after``; a comment line every
``heartbeat`` seconds, so a Router notices a dead manager behind a silent network. A
subscriber that falls behind gets the newest table, never each one it missed.

``GET /watch/MODEL?after=G&wait=S`` is the long-poll form of the same (one table, or 204
after S seconds), kept for ``bench/watch_transport.py``, which measured the two side by side
with 200 subscribers on this project's 2-core machine (2026-12-07, load average 9.9,
2 x 20 changes per side, blocks alternating): SSE delivered a change to the last
subscriber in p50 24 ms / p99 45 ms for 8.0 ms of the manager's CPU; long-poll in p50
69 ms / p99 112 ms for 49.8 ms (6.2x: every change is 200 new HTTP requests to parse,
answer and re-open). So Routers use SSE.

One asyncio loop in a daemon thread serves every connection: 10,000 idle subscribers are
10,000 sockets and small coroutines, not 10,000 threads. What it holds is bounded
(``http.WatchLimits``: connections, connections still without a request, subscribers; the
rest get 503), only models with a routing table are served (any other name is 404 and
costs no storage request: ``TableHub.known``), and errors are logged once per kind per
minute (``http.ErrorLog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from repo_manager.errors import InvalidInputError, InvalidNameError, StorageError
from repo_manager.metrics.metric_names import WATCH_SUBSCRIBERS
from repo_manager.names import validate_model_name
from repo_manager.state import RoutingTable
from repo_manager.storage import Storage
from repo_manager.watch.http import (
    BUSY,
    ErrorLog,
    Request,
    WatchLimits,
    parse_request,
    response,
    watch_arguments,
)
from repo_manager.watch.hub import TableHub

__all__ = ["WatchServer", "table_event"]

logger = logging.getLogger(__name__)

#: Longest request head accepted (a GET with a few headers is far below it).
_MAX_HEAD = 16 * 1024
#: Seconds an idle keep-alive connection (no request in progress) is kept open.
_IDLE_TIMEOUT = 60.0
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\n"
)
_KEEP_ALIVE = b": keep-alive\n\n"
#: Bytes queued to one subscriber before it counts as stuck and is dropped.
_MAX_BACKLOG = 1 << 20
#: What a connection waiting on a model does with its next table and the table's event.
_Listener = Callable[[RoutingTable, bytes], None]


def table_event(table: RoutingTable) -> bytes:
    """One SSE event carrying ``table`` (JSON on one line) with its generation as id."""
    data = json.dumps(table.to_document(), separators=(",", ":"))
    return f"id: {table.generation}\nevent: table\ndata: {data}\n\n".encode()


class _Subscribers(Collector):
    """``repo_manager_watch_subscribers{model}``: Routers subscribed to each model now."""

    def __init__(self, hub: TableHub) -> None:
        self.hub = hub

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            WATCH_SUBSCRIBERS, "Routers subscribed to the model's watch.", labels=["model"]
        )
        for model, count in sorted(self.hub.subscribers().items()):
            family.add_metric([model], count)
        yield family


class WatchServer:
    """Serves ``registry`` at /metrics and the routing tables of ``storage`` at /watch."""

    def __init__(
        self,
        storage: Storage,
        registry: CollectorRegistry,
        *,
        poll_interval: float = 0.2,
        heartbeat: float = 10.0,
        limits: WatchLimits | None = None,
    ) -> None:
        """``limits``: what the server holds at most, lowered at ``start`` to what the
        process's descriptor limit allows (``WatchLimits.fitted``)."""
        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat}")
        self.registry = registry
        self.heartbeat = heartbeat
        self.limits = limits or WatchLimits()
        self.errors = ErrorLog(logger)
        #: Connections open now, those without a whole request yet, subscribers, and the
        #: connections answered 503 (all touched only on the event loop).
        self.connections = 0
        self.pending = 0
        self.subscribed = 0
        self.refused = 0
        self.hub = TableHub(storage, poll_interval=poll_interval, on_change=self._changed)
        registry.register(_Subscribers(self.hub))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="watch-server", daemon=True
        )
        self._server: asyncio.Server | None = None
        #: Per model, what each connection waiting for its next table does with one.
        self._listeners: dict[str, set[_Listener]] = {}
        self._last_event: tuple[RoutingTable, bytes] | None = None
        self.port = 0
        #: Answers ``/decide/...`` (a person's one-click decision, ``links``): called off
        #: the event loop with the method, path and query; (status, content type, body).
        self.decide: Callable[[str, str, dict[str, list[str]]], tuple[int, str, str]] | None = None

    def start(self, port: int, addr: str = "127.0.0.1") -> WatchServer:
        """Bind ``addr:port`` (0: any free port, then in ``self.port``) and serve. A port
        that is taken is one clear InvalidInputError."""
        self.limits = self.limits.fitted()
        self._loop.set_exception_handler(self._loop_error)
        self._thread.start()
        starting = asyncio.start_server(
            self._serve, addr, port, limit=_MAX_HEAD, backlog=4096, reuse_address=True
        )
        try:
            self._server = asyncio.run_coroutine_threadsafe(starting, self._loop).result(30)
        except OSError as exc:
            self._stop_loop()
            raise InvalidInputError(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc} "
                "(pick another --metrics-port)"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self.hub.start()
        return self

    def offer(self, table: RoutingTable) -> None:
        """A table this process just recorded: subscribers get it now, not at the next poll."""
        self.hub.offer(table)

    def shutdown(self) -> None:
        """Stop serving: every subscriber's stream ends (Routers fall back to storage)."""
        self.hub.close()
        if self._server is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close_server(), self._loop).result(10)
        self._stop_loop()

    async def _close_server(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    # -- news from the hub (any thread) -------------------------------------------------------

    def _changed(self, table: RoutingTable) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, table.model)

    def _wake(self, model: str) -> None:
        table = self.hub.latest(model)
        if table is None:
            return
        event = self._encoded(table)
        for listener in list(self._listeners.get(model, ())):
            listener(table, event)

    def _encoded(self, table: RoutingTable) -> bytes:
        """``table``'s SSE event, encoded once however many subscribers get it."""
        if self._last_event is None or self._last_event[0] != table:
            self._last_event = (table, table_event(table))
        return self._last_event[1]

    # -- connections --------------------------------------------------------------------------

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """asyncio's own errors (an accept that failed, a transport's): one line per kind
        per interval instead of a traceback each."""
        error = context.get("exception")
        kind = type(error).__name__ if error is not None else "event loop"
        self.errors(kind, str(context.get("message", "")) + (f": {error}" if error else ""))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.limits.max_connections or (
            self.pending >= self.limits.max_pending
        ):
            self.refused += 1
            self.errors("connections refused", "at the connection limit, answering 503")
            writer.write(BUSY)
            writer.close()
            return
        self.connections += 1
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            return
        except Exception as exc:  # one client's failure: logged once per kind, never fatal
            self.errors(type(exc).__name__, str(exc))
        finally:
            self.connections -= 1
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection until it ends; the first must come within the head
        timeout (a connection that sends nothing holds a slot only that long)."""
        first = True  # no request yet: the connection counts as pending
        self.pending += 1
        try:
            while True:
                timeout = self.limits.head_timeout if first else _IDLE_TIMEOUT
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                if first:
                    self.pending -= 1
                    first = False
                request = parse_request(head)
                if request is None:
                    writer.write(response(400, b"bad request\n", "text/plain", close=True))
                    return
                if not await self._answer(request, reader, writer):
                    return
                await writer.drain()
                if request.close:
                    return
        finally:
            if first:
                self.pending -= 1

    async def _answer(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must end afterwards."""
        head = request.method == "HEAD"
        close = request.close

        def plain(status: int, text: str) -> bytes:
            return response(status, f"{text}\n".encode(), "text/plain", close=close, head=head)

        if request.path.startswith("/decide/") and self.decide is not None:
            decide = self.decide
            status, kind, text = await self._loop.run_in_executor(
                None, lambda: decide(request.method, request.path, request.query)
            )
            writer.write(response(status, text.encode(), kind, close=True, head=head))
            return False  # a POST's body is not read: never reuse the connection
        if request.method not in ("GET", "HEAD"):
            writer.write(response(405, b"GET only\n", "text/plain", close=True, head=head))
            return False
        if request.path == "/metrics":
            body = await self._loop.run_in_executor(None, generate_latest, self.registry)
            writer.write(response(200, body, CONTENT_TYPE_LATEST, close=close, head=head))
            return True
        if not request.path.startswith("/watch/"):
            writer.write(plain(404, "not found"))
            return True
        try:
            model = validate_model_name(unquote(request.path.removeprefix("/watch/")))
        except InvalidNameError as exc:
            writer.write(plain(400, str(exc)))
            return True
        arguments = watch_arguments(request)
        if isinstance(arguments, str):
            writer.write(plain(400, arguments))
            return True
        found = await self._exists(model)
        if found is not True:
            writer.write(plain(503, found) if found else plain(404, f"no model {model}"))
            return True
        if head:
            writer.write(response(200, b"", "text/event-stream", close=True, head=True))
            return False
        if self.subscribed >= self.limits.max_subscribers:
            self.refused += 1
            self.errors("subscribers refused", "at the subscriber limit, answering 503")
            writer.write(BUSY)
            return False
        after, wait = arguments
        if wait is None:
            await self._stream(model, after, reader, writer)
            return False
        writer.write(await self._long_poll(model, after, wait, request))
        return True

    async def _exists(self, model: str) -> bool | str:
        """True when ``model`` has a routing table; False when it has none; a reason when
        storage could not tell (the listing runs off the loop, once per interval)."""
        known = self.hub.known(model)
        if known is None:
            try:
                await self._loop.run_in_executor(None, self.hub.relist)
            except StorageError as exc:
                self.errors("storage", str(exc))
                return "cannot list the repository's models now"
            known = self.hub.known(model)
        return bool(known)

    async def _subscribed(self, model: str, listener: _Listener) -> None:
        self.subscribed += 1
        self._listeners.setdefault(model, set()).add(listener)
        await self._loop.run_in_executor(None, self.hub.subscribe, model)

    def _unsubscribed(self, model: str, listener: _Listener) -> None:
        self.subscribed -= 1
        listeners = self._listeners.get(model, set())
        listeners.discard(listener)
        if not listeners:
            self._listeners.pop(model, None)
        self.hub.unsubscribe(model)

    async def _stream(
        self, model: str, after: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """SSE until the subscriber goes away or the server stops.

        A new table is written to every subscriber's socket by ``_wake`` itself, encoded
        once: one buffered write per subscriber and no task to wake, which is what keeps a
        push to thousands of subscribers cheap. This coroutine only sends keep-alives and
        notices the subscriber leaving.
        """
        sent = [after]

        def push(table: RoutingTable, event: bytes) -> None:
            if table.generation <= sent[0] or writer.is_closing():
                return
            sent[0] = table.generation
            writer.write(event)
            if writer.transport.get_write_buffer_size() > _MAX_BACKLOG:
                writer.transport.abort()  # stuck reader: it reconnects and catches up

        writer.write(_SSE_HEAD)
        await self._subscribed(model, push)
        gone = asyncio.ensure_future(reader.read(1))  # EOF (or any byte): the client left
        try:
            table = self.hub.latest(model)
            if table is not None:
                push(table, self._encoded(table))
            while not writer.is_closing():
                done, _ = await asyncio.wait({gone}, timeout=self.heartbeat)
                if done:
                    return
                writer.write(_KEEP_ALIVE)
                await writer.drain()
        finally:
            gone.cancel()
            self._unsubscribed(model, push)

    async def _long_poll(self, model: str, after: int, wait: float, request: Request) -> bytes:
        """One table newer than ``after`` as JSON, or 204 after ``wait`` seconds."""
        wake = asyncio.Event()

        def listener(_table: RoutingTable, _event: bytes) -> None:
            wake.set()

        await self._subscribed(model, listener)
        try:
            deadline = self._loop.time() + wait
            while True:
                wake.clear()
                table = self.hub.latest(model)
                if table is not None and table.generation > after:
                    body = json.dumps(table.to_document()).encode()
                    return response(200, body, "application/json", close=request.close)
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    return response(204, b"", "text/plain", close=request.close)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), remaining)
        finally:
            self._unsubscribed(model, listener)
