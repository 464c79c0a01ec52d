"""The Triton servers a Router sends to: one client each, round robin, failover.

One attempt on a version moves from server to server while one is unreachable (it is then
skipped for ``retry_after`` seconds) or lacks the model or version (restarted, not yet
reconciled); what "unreachable" means is ``transport.is_unreachable``, the manager's rule
too. A ``dns://`` fleet is followed here as its records change.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from repo_manager.discovery import resolve_urls
from repo_manager.errors import TritonError, TritonUnavailableError
from repo_manager.shm import SharedMemoryChannel, SharedMemoryUnusable
from repo_manager.transport import is_unreachable

__all__ = ["ClientFactory", "Inputs", "Outputs", "ServerPool"]

logger = logging.getLogger(__name__)

#: Makes the gRPC client of one url (tests pass fakes).
ClientFactory = Callable[[str], Any]
Inputs = Sequence[grpcclient.InferInput]
Outputs = Sequence[grpcclient.InferRequestedOutput] | None

#: Statuses with which a server says it cannot serve the model or version *here*
#: (UNAVAILABLE: version not ready; NOT_FOUND: model not loaded, e.g. after a restart).
_MISSING_ON_SERVER = ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND")


class _Server:
    """One Triton gRPC endpoint and when it may be tried again after a transport failure."""

    __slots__ = ("client", "down_until", "url")

    def __init__(self, url: str, client: Any) -> None:
        self.url = url
        self.client = client
        self.down_until = 0.0


class ServerPool:
    """The servers serving one model's versions, and how one request attempt visits them.

    One gRPC client per server, shared by all threads: tritonclient documents its gRPC
    client as thread-safe except for streaming, and gRPC channels multiplex concurrent calls.
    """

    def __init__(
        self,
        model: str,
        triton_model: str,
        clients: Sequence[tuple[str, Any]],
        *,
        factory: ClientFactory,
        timeout: float | None,
        retry_after: float,
        channel: SharedMemoryChannel | None = None,
        addresses: Sequence[str] = (),
        resolve_interval: float = 10.0,
    ) -> None:
        """
        Args:
            model: the public name (for messages).
            triton_model: the model every request names (the versions model).
            clients: ``(url, client)`` for each server, in order.
            factory: makes the client of a server that joins a ``dns://`` fleet.
            timeout: client-side deadline per attempt, in seconds (None: none).
            retry_after: seconds an unreachable server is skipped before a retry.
            channel: shared memory to the one server, tried before plain gRPC; the pool
                owns and closes it. Only for a single fixed server: a fleet may change.
            addresses: the ``dns://`` urls to resolve again (empty: a fixed fleet).
            resolve_interval: seconds between those resolutions (``follow_dns``).
        """
        if not clients:
            raise ValueError("a server pool needs at least one server")
        if channel is not None and (len(clients) != 1 or addresses):
            raise ValueError("shared memory is for a single fixed server")
        self.model = model
        self.triton_model = triton_model
        self._factory = factory
        self._timeout = timeout
        self._retry_after = retry_after
        self._channel = channel
        self._addresses = tuple(addresses)
        self._resolve_interval = resolve_interval
        self._resolved_at = time.monotonic()
        self._servers = [_Server(url, client) for url, client in clients]
        self._single = self._servers[0] if len(self._servers) == 1 else None
        self._retired: list[_Server] = []
        self._rr = itertools.count()
        self.urls = tuple(s.url for s in self._servers)

    # ---- one attempt -----------------------------------------------------------------------

    def send(self, version: str, inputs: Inputs, outputs: Outputs) -> Any:
        """One attempt on ``version``, moving to the next server while one is unreachable
        or lacks the model or version (e.g. restarted and not yet reconciled).

        Raises InferenceServerException for Triton's answers (the caller may fall back to
        the other version) and TritonUnavailableError when no server could be reached.
        """
        single = self._single
        if single is not None:
            try:
                channel = self._channel
                if channel is not None and not channel.disabled:
                    try:
                        return channel.infer(version, inputs, outputs, self._timeout)
                    except SharedMemoryUnusable as exc:
                        logger.debug("shared memory unusable, plain gRPC instead: %s", exc)
                return self._infer(single, version, inputs, outputs)
            except InferenceServerException as exc:
                if is_unreachable(exc):
                    raise TritonUnavailableError(f"Triton at {single.url}: {exc}") from exc
                raise
        last: InferenceServerException | None = None
        answered: InferenceServerException | None = None
        for server in self.order():
            try:
                return self._infer(server, version, inputs, outputs)
            except InferenceServerException as exc:
                if exc.status() not in _MISSING_ON_SERVER:
                    raise
                if not is_unreachable(exc):
                    # This server lacks the model or version (restarted, not yet
                    # reconciled): another server may have it.
                    answered = exc
                    continue
                server.down_until = time.monotonic() + self._retry_after
                logger.warning("Triton at %s unreachable: %s", server.url, exc)
                last = exc
        if answered is not None:
            raise answered
        raise TritonUnavailableError(self._none_reachable(last)) from last

    def _infer(self, server: _Server, version: str, inputs: Inputs, outputs: Outputs) -> Any:
        return server.client.infer(
            self.triton_model,
            inputs,
            model_version=version,
            outputs=outputs,
            client_timeout=self._timeout,
        )

    def model_config(self) -> Any:
        """The model's config from the first server that answers (it is model-wide).

        Raises InferenceServerException for a server's refusal and TritonUnavailableError
        when none could be reached.
        """
        last: InferenceServerException | None = None
        for server in self.order():
            try:
                return server.client.get_model_config(self.triton_model).config
            except InferenceServerException as exc:
                if not is_unreachable(exc):
                    raise
                last = exc
        raise TritonUnavailableError(self._none_reachable(last)) from last

    def order(self) -> list[_Server]:
        """Round-robin order, servers recently found unreachable last (tried as last resort)."""
        servers = self._servers
        start = next(self._rr) % len(servers)
        rotated = servers[start:] + servers[:start]
        now = time.monotonic()
        up = [s for s in rotated if s.down_until <= now]
        return up + [s for s in rotated if s.down_until > now]

    def _none_reachable(self, last: InferenceServerException | None) -> str:
        return f"no Triton server reachable among {', '.join(self.urls)}: {last}"

    # ---- the fleet -------------------------------------------------------------------------

    def follow_dns(self) -> None:
        """Resolve the ``dns://`` urls again when ``resolve_interval`` has passed."""
        if self._addresses and time.monotonic() - self._resolved_at >= self._resolve_interval:
            self.rediscover()

    def rediscover(self) -> tuple[str, ...]:
        """Resolve ``dns://`` urls again and serve the fleet they name now; returns it.

        A failed lookup keeps the last good fleet. Clients of servers that left are closed
        one round later, so requests in flight on them finish.
        """
        self._resolved_at = time.monotonic()
        try:
            urls = resolve_urls(self._addresses)
        except TritonError as exc:
            logger.warning("%s; keeping %s", exc, ", ".join(self.urls))
            return self.urls
        if tuple(urls) == self.urls:
            return self.urls
        for server in self._retired:
            server.client.close()
        known = {server.url: server for server in self._servers}
        servers = [known.pop(u) if u in known else _Server(u, self._factory(u)) for u in urls]
        self._single = servers[0] if len(servers) == 1 else None
        self._servers, self.urls = servers, tuple(urls)
        self._retired = list(known.values())
        logger.info("model %s: Triton fleet now %s", self.model, ", ".join(urls))
        return self.urls

    def close(self) -> None:
        """Unregister shared memory, then close every client (retired ones too)."""
        if self._channel is not None:
            self._channel.close()
        for server in self._servers + self._retired:
            try:
                server.client.close()
            except Exception as exc:  # closing must not mask the caller's own error
                logger.debug("closing client for %s: %s", server.url, exc)
