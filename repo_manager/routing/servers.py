"""The Triton servers a Router sends to: one client each, round robin, failover.

One attempt on a version moves from server to server while one is unreachable (it is then
skipped for ``retry_after`` seconds), lacks the model or version (restarted, not yet
reconciled), or misses the per-request deadline; what "unreachable" means is
``transport.is_unreachable``, the manager's rule too. A server that missed a deadline is
treated as hung: a stopped process takes connections and answers nothing, so every request
sent there would wait the whole deadline (measured before: 4 Router threads, one of two
servers SIGSTOPped for 20 s, 4 requests took 20 s and only 2 completed in the stop). It
leaves the rotation at once and comes back when it answers a liveness probe (every
``probe_interval``), so at most the requests in flight on it when it stopped wait for the
deadline. A ``dns://`` fleet is followed here as its records change.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from repo_manager.discovery import resolve_urls
from repo_manager.errors import InvalidInputError, TritonError, TritonUnavailableError
from repo_manager.shm import SharedMemoryChannel, SharedMemoryUnusable, is_local_url
from repo_manager.transport import is_unreachable

__all__ = ["ClientFactory", "Inputs", "Outputs", "ServerPool", "shm_wanted"]

logger = logging.getLogger(__name__)

#: Makes the gRPC client of one url (tests pass fakes).
ClientFactory = Callable[[str], Any]
Inputs = Sequence[grpcclient.InferInput]
Outputs = Sequence[grpcclient.InferRequestedOutput] | None

#: Statuses with which a server says it cannot serve the model or version *here*
#: (UNAVAILABLE: version not ready; NOT_FOUND: model not loaded, e.g. after a restart).
_MISSING_ON_SERVER = ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND")
_DEADLINE = "StatusCode.DEADLINE_EXCEEDED"


def shm_wanted(setting: bool | str, url: str, *, custom_client: bool) -> bool:
    """Whether a Router's ``shared_memory`` setting turns it on for ``url``."""
    if setting == "auto":
        return is_local_url(url) and not custom_client
    if isinstance(setting, bool):
        return setting
    raise InvalidInputError(f"shared_memory must be True, False or 'auto', not {setting!r}")


class _Server:
    """One Triton gRPC endpoint, when it may be tried again after a transport failure, and
    whether it is out of rotation for missing a deadline (until a probe answers)."""

    __slots__ = ("client", "down_until", "hung", "url")

    def __init__(self, url: str, client: Any) -> None:
        self.url = url
        self.client = client
        self.down_until = 0.0
        self.hung = False


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
        probe_interval: float = 0.5,
        probe_timeout: float = 1.0,
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
            probe_interval: seconds between liveness probes of a server out of rotation
                for missing a deadline.
            probe_timeout: deadline of one such probe, in seconds.
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
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._prober: threading.Thread | None = None
        self._probe_lock = threading.Lock()
        self._closed = threading.Event()
        self._last = threading.local()  # the server this thread's last attempt went to

    # ---- one attempt -----------------------------------------------------------------------

    def send(
        self,
        version: str,
        inputs: Inputs,
        outputs: Outputs,
        *,
        avoid: str | None = None,
        among: frozenset[str] | None = None,
    ) -> Any:
        """One attempt on ``version``, moving to the next server while one is unreachable,
        lacks the model or version (e.g. restarted and not yet reconciled), or misses the
        deadline (then out of rotation until a probe answers); ``avoid``: a server to try
        only after the others (the one where the caller's last attempt failed); ``among``:
        the only servers that hold ``version`` (a canary limited to some servers; None:
        every one).

        Raises InferenceServerException for Triton's answers (the caller may fall back to
        the other version; also when no server of ``among`` is in the pool) and
        TritonUnavailableError when no server could be reached.
        """
        single = self._single
        if single is not None and (among is None or single.url in among):
            self._last.url = single.url
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
        late: InferenceServerException | None = None
        servers = self.order(avoid)
        if among is not None:
            servers = [s for s in servers if s.url in among]
            if not servers:
                raise InferenceServerException(
                    f"version {version} is only on {', '.join(sorted(among))}, none of "
                    f"{', '.join(self.urls)}",
                    status=_MISSING_ON_SERVER[1],
                )
        for server in servers:
            self._last.url = server.url
            try:
                return self._infer(server, version, inputs, outputs)
            except InferenceServerException as exc:
                if exc.status() == _DEADLINE:
                    self._leave_out(server)
                    late = exc
                    continue
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
        if late is not None:  # every server was late: the version may be what is slow
            raise late
        raise TritonUnavailableError(self._none_reachable(last)) from last

    def reaches(self, among: frozenset[str]) -> bool:
        """True when some server of the pool is one of ``among``."""
        return not among.isdisjoint(self.urls)

    def last_url(self) -> str | None:
        """The server this thread's last attempt went to (a fallback avoids it)."""
        url: str | None = getattr(self._last, "url", None)
        return url

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

    def order(self, avoid: str | None = None) -> list[_Server]:
        """Round-robin order; last resorts after it: ``avoid``, then servers recently found
        unreachable, then those out of rotation for a missed deadline."""
        servers = self._servers
        start = next(self._rr) % len(servers)
        rotated = servers[start:] + servers[:start]
        now = time.monotonic()
        up = [s for s in rotated if not s.hung and s.down_until <= now]
        first = [s for s in up if s.url != avoid]
        down = [s for s in rotated if not s.hung and s.down_until > now]
        return first + [s for s in up if s.url == avoid] + down + [s for s in rotated if s.hung]

    # ---- hung servers ----------------------------------------------------------------------

    def out_of_rotation(self) -> list[str]:
        """Servers left out for a missed deadline, until a probe answers."""
        return [s.url for s in self._servers if s.hung]

    def _leave_out(self, server: _Server) -> None:
        if not server.hung:
            server.hung = True
            logger.warning(
                "Triton at %s missed the %ss deadline (hung or overloaded): out of rotation "
                "until it answers a liveness probe (every %ss)",
                server.url,
                self._timeout,
                self._probe_interval,
            )
        with self._probe_lock:
            if self._prober is None and not self._closed.is_set():
                self._prober = threading.Thread(
                    target=self._probe, name=f"repo-manager-probe-{self.model}", daemon=True
                )
                self._prober.start()

    def _probe(self) -> None:
        """Probe the servers out of rotation until none is left (then the thread ends)."""
        while not self._closed.wait(self._probe_interval):
            hung = [s for s in self._servers if s.hung]
            if not hung:
                with self._probe_lock:  # a server left out meanwhile starts no new prober
                    if not any(s.hung for s in self._servers):
                        self._prober = None
                        return
            for server in hung:
                try:
                    live = bool(server.client.is_server_live(client_timeout=self._probe_timeout))
                except Exception:  # any failure to answer: still out
                    live = False
                if live:
                    server.hung = False
                    logger.warning("Triton at %s answers again: back in rotation", server.url)

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
        self._closed.set()
        if self._channel is not None:
            self._channel.close()
        for server in self._servers + self._retired:
            try:
                server.client.close()
            except Exception as exc:  # closing must not mask the caller's own error
                logger.debug("closing client for %s: %s", server.url, exc)
