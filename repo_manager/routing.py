"""The client-side Router: weighted, sticky canary routing between versions of one model.

Triton has no traffic splitting, and a request without a version goes to the highest READY
version, so the Router pins ``model_version`` on every request and picks the version from
the routing table the manager writes into the repository (``repo_manager.state``). A daemon
thread polls the table's cheap change token and re-reads it only when it changed, so a
weight change made by another process reaches every live Router within ``poll_interval``.

Layout of the [0, 100) range: stable takes the bottom, the canary the TOP ``w`` percent. A
sticky key hashes to a fixed point of that range, so a key on the canary stays on the canary
while its weight grows (the boundary only moves down), and keys move only at promote or
rollback.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from repo_manager import yolo
from repo_manager.discovery import has_dns, resolve_urls
from repo_manager.errors import (
    InvalidInputError,
    RoutingError,
    StorageError,
    TritonError,
    TritonUnavailableError,
)
from repo_manager.metrics import ShadowMetrics, VersionMetrics, shadow_metrics, version_metrics
from repo_manager.names import versions_model_name
from repo_manager.shm import SharedMemoryChannel, SharedMemoryUnusable, is_local_url
from repo_manager.state import RoutingTable, load_routing_table, state_key
from repo_manager.storage import Storage, open_storage
from repo_manager.transport import GrpcSecurity, is_unreachable, make_grpc_client

__all__ = ["Detections", "RoutePlan", "RoutedResult", "Router", "key_point"]

logger = logging.getLogger(__name__)

Key = str | bytes | int
#: Compares a mirrored (shadow) answer with the one the user got; records into metrics.
Compare = Callable[[Any, ShadowMetrics], None]
#: 53 mixed bits -> a float in [0, 100) with every value exactly representable.
_KEY_SCALE = 100.0 / float(1 << 53)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_crc32 = zlib.crc32
_random = random.random


def key_point(key: Key) -> float:
    """The fixed position of a sticky key in [0, 100).

    ``crc32(utf-8 key)`` times the 64-bit golden-ratio constant, mod 2**64, top 53 bits,
    scaled to [0, 100). Not ``hash()``: Python salts string hashes per process, and a key
    must land on the same version in every client process (in any language) and after
    restarts. The multiply spreads crc32's linear structure: plain crc32 of sequential keys
    ("user-1", "user-2", ...) is measurably non-uniform; mixed, it passes a chi-square
    test like blake2b, at a third of blake2b's cost (about 0.2 µs against 0.6 µs).
    """
    if isinstance(key, str):
        data = key.encode()
    elif isinstance(key, bytes):
        data = key
    elif isinstance(key, int) and not isinstance(key, bool):
        data = str(key).encode()
    else:
        raise InvalidInputError(f"routing key must be str, bytes or int, not {type(key).__name__}")
    return (((_crc32(data) * _GOLDEN) & _MASK64) >> 11) * _KEY_SCALE


@dataclass(kw_only=True, frozen=True, slots=True)
class RoutePlan:
    """An immutable routing decision table built once per routing-table change.

    Swapped by one reference assignment, so request threads never lock: each request
    reads ``router._plan`` once and uses that snapshot throughout.
    """

    table: RoutingTable | None
    #: Versions with a share, in range order: stable lowest, the canary last (top).
    versions: tuple[str, ...]
    #: Upper bounds of every version's share but the last, scaled to [0, 100).
    thresholds: tuple[float, ...]
    #: Where a request goes when its version fails: canary -> stable, stable -> canary.
    fallback: dict[str, str | None]
    metrics: dict[str, VersionMetrics] = field(default_factory=dict)

    @classmethod
    def build(cls, model: str, table: RoutingTable | None) -> RoutePlan:
        if table is None:
            return cls(table=None, versions=(), thresholds=(), fallback={})
        stable, canary = table.stable, table.canary
        named = [v for v in (stable, canary) if v is not None]
        others = sorted((v for v in table.weights if v not in named), key=_version_order)
        order = [v for v in (stable, *others, canary) if v is not None]
        order = list(dict.fromkeys(order))  # stable == canary must not count twice
        shares = [(v, table.weights.get(v, 0)) for v in order]
        shares = [(v, w) for v, w in shares if w > 0]
        if not shares and order:
            shares = [(order[0], 1)]  # no weights written: everything to stable
        total = float(sum(w for _, w in shares))
        thresholds, cumulative = [], 0
        for _, weight in shares[:-1]:
            cumulative += weight
            thresholds.append(cumulative * 100.0 / total)
        fallback: dict[str, str | None] = {}
        for v in order:
            if v == stable:
                fallback[v] = canary if canary is not None and canary != stable else None
            else:
                fallback[v] = stable
        return cls(
            table=table,
            versions=tuple(v for v, _ in shares),
            thresholds=tuple(thresholds),
            fallback=fallback,
            metrics={v: version_metrics(model, v) for v in order},
        )

    def choose(self, key: Key | None = None) -> str:
        """One routing decision (well under a microsecond without a key)."""
        versions = self.versions
        if len(versions) == 1:
            return versions[0]
        if not versions:
            raise RoutingError("no routing table: the model has no version to route to")
        point = _random() * 100.0 if key is None else key_point(key)
        return versions[bisect.bisect_right(self.thresholds, point)]


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


@dataclass(kw_only=True, slots=True)
class RoutedResult:
    """Triton's answer plus which version gave it.

    Not frozen: one is built per request, and a frozen dataclass's ``object.__setattr__``
    per field measured ~1.5 µs more right after a gRPC call (half the Router's overhead).
    """

    result: grpcclient.InferResult
    #: The version that served the request (always pinned, never Triton's choice).
    version: str
    #: True when the chosen version failed and the other version served the request.
    fallback: bool = False

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.result.as_numpy(name)


@dataclass(kw_only=True, frozen=True, eq=False)
class Detections:
    """Detections of one image, in its own pixel coordinates."""

    boxes: npt.NDArray[np.float32]  # (N, 4) xyxy
    scores: npt.NDArray[np.float32]  # (N,)
    class_ids: npt.NDArray[np.int64]  # (N,)
    version: str
    fallback: bool = False
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> dict[int, str]:
        """Class id -> class name, for every class the model knows (as Ultralytics has it)."""
        return dict(enumerate(self.class_names))

    @property
    def labels(self) -> list[str]:
        """The class name of each detection."""
        names = self.class_names
        return [names[i] if 0 <= i < len(names) else str(i) for i in self.class_ids.tolist()]


@dataclass(kw_only=True, frozen=True)
class _DetectorSpec:
    """What ``detect`` needs from the model config, read once."""

    input_name: str
    output_name: str
    datatype: str
    size: tuple[int, int]
    class_names: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any) -> _DetectorSpec:
        if not config.input or not config.output:
            raise TritonError(f"model {config.name!r} has no inputs or outputs in its config")
        inp = config.input[0]
        dims = [int(d) for d in inp.dims]
        if config.max_batch_size == 0 and len(dims) == 4:
            dims = dims[1:]
        if len(dims) != 3 or dims[0] != 3:
            raise TritonError(f"model {config.name!r} input {inp.name!r} is {dims}, not [3, H, W]")
        params = config.parameters
        height, width = dims[1], dims[2]
        if height <= 0 or width <= 0:
            height, width = _parse_imgsz(params["imgsz"].string_value if "imgsz" in params else "")
        names: tuple[str, ...] = ()
        if "class_names" in params:
            names = _parse_names(params["class_names"].string_value)
        return cls(
            input_name=inp.name,
            output_name=config.output[0].name,
            datatype=model_config_pb2.DataType.Name(inp.data_type).removeprefix("TYPE_"),
            size=(height, width),
            class_names=names,
        )


def _parse_imgsz(text: str) -> tuple[int, int]:
    """``"640"``, ``"[480, 640]"`` or ``"480,640"`` -> (height, width); 640 when absent."""
    if not text.strip():
        return (640, 640)
    try:
        value = json.loads(text if not ("," in text and "[" not in text) else f"[{text}]")
    except ValueError as exc:
        raise TritonError(f"model parameter imgsz={text!r} is not a size") from exc
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise TritonError(f"model parameter imgsz={text!r} is not a size")


def _parse_names(text: str) -> tuple[str, ...]:
    """A JSON list of names, or Ultralytics' ``{id: name}`` dict, as a tuple by id."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise TritonError(f"model parameter class_names is not JSON: {exc}") from exc
    if isinstance(value, dict):
        return tuple(str(value[k]) for k in sorted(value, key=int))
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise TritonError("model parameter class_names is neither a list nor a dict")


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


ClientFactory = Callable[[str], Any]


def _wants_shared_memory(setting: bool | str, url: str, *, custom_client: bool) -> bool:
    if setting == "auto":
        return is_local_url(url) and not custom_client
    if isinstance(setting, bool):
        return setting
    raise InvalidInputError(f"shared_memory must be True, False or 'auto', not {setting!r}")


class Router:
    """Sends inference requests for one model to its stable and canary versions.

    One gRPC client per server, shared by all threads: tritonclient documents its gRPC
    client as thread-safe except for streaming, and gRPC channels multiplex concurrent calls.
    """

    def __init__(
        self,
        model: str,
        url: str | Sequence[str] = "localhost:8001",
        repository: str | os.PathLike[str] = "./model_repository",
        *,
        poll_interval: float = 0.2,
        timeout: float | None = None,
        server_retry_after: float = 1.0,
        client_factory: ClientFactory | None = None,
        shadow: float = 0.0,
        shadow_queue: int = 32,
        security: GrpcSecurity | None = None,
        s3_endpoint: str | None = None,
        resolve_interval: float = 10.0,
        shared_memory: bool | str = "auto",
    ) -> None:
        """
        Args:
            model: the published model name (``repository``'s name for it). The Router
                calls its versions model (``versions_model_name(model)``), always pinned;
                the public name itself answers unpinned clients from stable only.
            url: one Triton gRPC address, or several serving the same repository; requests
                are spread round-robin and move to the next one when one is unreachable.
                ``dns://NAME:PORT`` stands for every address of NAME (a headless Service),
                resolved again every ``resolve_interval`` seconds.
            repository: where the manager keeps the routing table (the CLI's --repository).
            poll_interval: seconds between checks of the routing table's change token.
            timeout: client-side deadline per attempt, in seconds (None: none).
            server_retry_after: seconds an unreachable server is skipped before a retry.
            client_factory: makes the per-server client (tests pass fakes).
            shadow: share (0..1) of requests served by stable that are also sent to the
                canary in the background, its answer discarded (``detect`` compares its
                detections with stable's); judges a canary before any user sees it, even
                at weight 0. See ``set_shadow``.
            shadow_queue: mirrored requests waiting at most; more are dropped (counted),
                so a slow canary never slows the users' requests.
            security: TLS files and extra headers (auth proxies) for every gRPC call.
            s3_endpoint: the S3-compatible endpoint of an ``s3://`` repository
                (default: ``AWS_ENDPOINT_URL``); the table is then polled by HEAD (ETag).
            shared_memory: send tensors through Triton system shared memory (one region
                per thread) instead of the gRPC message: True, False, or "auto" (on for
                a single server on this machine with the default client, and never for
                a ``dns://`` fleet, which may change). Any
                shared-memory failure falls back to plain gRPC.
        """
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise InvalidInputError("Router needs at least one Triton url")
        self._addresses = tuple(urls) if has_dns(urls) else ()
        self._resolve_interval = resolve_interval
        self._resolved_at = time.monotonic()
        if self._addresses:
            urls = resolve_urls(urls)
        if poll_interval <= 0:
            raise InvalidInputError(f"poll_interval must be positive, got {poll_interval}")
        self.model = model
        #: The Triton model the Router calls: the one holding the version folders.
        self.triton_model = versions_model_name(model)
        self.urls = tuple(urls)
        self._timeout = timeout
        self._retry_after = server_retry_after
        self._storage: Storage = open_storage(os.fspath(repository), s3_endpoint=s3_endpoint)
        self._key = state_key(model)
        factory = client_factory or (lambda u: make_grpc_client(u, security))
        self._factory = factory
        self._retired: list[_Server] = []
        self._servers = [_Server(u, factory(u)) for u in urls]
        self._single = self._servers[0] if len(self._servers) == 1 else None
        self._shm: SharedMemoryChannel | None = None
        # A dns:// fleet may change under the Router: shared memory is for one fixed server.
        if (
            self._single is not None
            and not self._addresses
            and _wants_shared_memory(
                shared_memory, self._single.url, custom_client=client_factory is not None
            )
        ):
            self._shm = SharedMemoryChannel(self._single.client, self.triton_model)
        self._rr = itertools.count()
        self._token: object = object()  # never equal to a real token: first check reads
        self._reload_lock = threading.Lock()
        self._changed = threading.Condition()
        self._plan = RoutePlan.build(model, None)
        self._spec: _DetectorSpec | None = None
        self._spec_lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._poll_interval = poll_interval
        self._shadow = 0.0
        self._shadow_queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, shadow_queue))
        self._shadow_worker: threading.Thread | None = None
        self.set_shadow(shadow)
        self.refresh()
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"repo-manager-router-{model}", daemon=True
        )
        self._poller.start()

    # ---- routing table -------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable | None:
        """The routing table in force (None until the model's state document exists)."""
        return self._plan.table

    @property
    def plan(self) -> RoutePlan:
        return self._plan

    def refresh(self) -> RoutingTable | None:
        """Re-read the routing table now if its change token moved; returns the one in force.

        A missing or unreadable document keeps the last good table: a half-broken
        repository must not take traffic away from versions that are serving.
        """
        with self._reload_lock:
            token = self._storage.change_token(self._key)
            if token == self._token:
                return self._plan.table
            self._token = token
            where = f"{self._storage.location}/{self._key}"
            if token is None:
                logger.warning("routing table %s is missing; keeping the last good one", where)
                return self._plan.table
            try:
                table = load_routing_table(self._storage, self.model)
            except StorageError as exc:
                logger.warning("%s; keeping the last good routing table", exc)
                return self._plan.table
            if table is None:
                logger.warning("routing table %s vanished; keeping the last good one", where)
                return self._plan.table
            self._install(table)
            return table

    def _install(self, table: RoutingTable) -> None:
        self._plan = RoutePlan.build(self.model, table)
        logger.info(
            "model %s routing generation %d: %s", self.model, table.generation, table.weights
        )
        with self._changed:
            self._changed.notify_all()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.refresh()
            except Exception as exc:  # the poller must outlive any storage hiccup
                logger.warning("routing table poll for %s failed: %s", self.model, exc)
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

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until the table in force has at least ``generation``; False on timeout."""

        def reached() -> bool:
            table = self._plan.table
            return table is not None and table.generation >= generation

        with self._changed:
            return self._changed.wait_for(reached, timeout)

    # ---- inference -----------------------------------------------------------------------

    def choose(self, key: Key | None = None) -> str:
        """The version the next request with this key would be sent to."""
        return self._plan.choose(key)

    def infer(
        self,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None = None,
        key: Key | None = None,
        version: str | int | None = None,
    ) -> RoutedResult:
        return self._infer(inputs, outputs, key, version, mirror=True)

    def _infer(
        self,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None,
        key: Key | None,
        version: str | int | None,
        *,
        mirror: bool,
    ) -> RoutedResult:
        """Run one request on the routed version; on failure retry once on the other one.

        ``key`` makes the choice sticky; ``version`` pins it (no fallback then: a caller
        that names a version, e.g. a validation run, must see that version's failures).
        Any Triton error triggers the retry, a malformed request included (it then fails
        twice): telling "this version is broken" from "this input is bad" by status code is
        unreliable, and a retry is cheaper than a lost request during a rollout.

        Raises:
            RoutingError: no version to route to, or the chosen and fallback versions failed.
            TritonUnavailableError: no server could be reached.
        """
        if self._closed:
            raise RoutingError("Router is closed")
        plan = self._plan
        if version is None:
            chosen = plan.choose(key)
            alternative = plan.fallback.get(chosen)
        else:
            chosen, alternative = str(version), None
        m = plan.metrics.get(chosen) or version_metrics(self.model, chosen)
        started = time.perf_counter()
        try:
            result = self._send(chosen, inputs, outputs)
        except InferenceServerException as exc:
            m.attempt_failed()
            if alternative is None:
                m.request_failed()
                raise RoutingError(
                    f"model {self.model} version {chosen} failed: {exc}"
                    + ("" if version is not None else " (no other version to fall back to)")
                ) from exc
            return self._fall_back(plan, chosen, alternative, exc, inputs, outputs)
        except TritonUnavailableError:
            m.attempt_failed()
            m.request_failed()
            raise
        m.served(time.perf_counter() - started)
        if mirror and self._shadow and version is None:
            self._maybe_mirror(plan, chosen, inputs, outputs, None)
        return RoutedResult(result=result, version=chosen)

    # ---- shadow traffic ------------------------------------------------------------------

    def set_shadow(self, share: float) -> None:
        """Mirror ``share`` (0..1) of stable's requests to the canary from now on.

        ``infer`` mirrors the caller's own ``InferInput`` objects after answering: do not
        modify them afterwards while shadowing (``detect`` builds its own).
        """
        if not 0.0 <= share <= 1.0:
            raise InvalidInputError(f"shadow share must be between 0 and 1, got {share}")
        self._shadow = float(share)
        if share and self._shadow_worker is None:
            self._shadow_worker = threading.Thread(
                target=self._shadow_loop, name=f"repo-manager-shadow-{self.model}", daemon=True
            )
            self._shadow_worker.start()

    def _maybe_mirror(
        self,
        plan: RoutePlan,
        served: str,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None,
        compare: Compare | None,
    ) -> None:
        table = plan.table
        if table is None or table.canary is None or served != table.stable:
            return
        if table.canary == served or _random() >= self._shadow:
            return
        try:
            self._shadow_queue.put_nowait((table.canary, inputs, outputs, compare))
        except queue.Full:
            shadow_metrics(self.model, table.canary).add(dropped=1)

    def _shadow_loop(self) -> None:
        while True:
            item = self._shadow_queue.get()
            if item is None:
                return
            version, inputs, outputs, compare = item
            sm = shadow_metrics(self.model, version)
            started = time.perf_counter()
            try:
                result = self._send(version, inputs, outputs)
            except (InferenceServerException, TritonUnavailableError) as exc:
                logger.debug("shadow request to %s version %s failed: %s", self.model, version, exc)
                sm.add(error=1)
                continue
            sm.add(ok=1, latency_sum=time.perf_counter() - started, latency_count=1)
            if compare is not None:
                try:
                    compare(result, sm)
                except Exception as exc:  # a comparison must never kill the worker
                    logger.warning("shadow comparison for %s failed: %s", self.model, exc)

    def _fall_back(
        self,
        plan: RoutePlan,
        chosen: str,
        alternative: str,
        first: InferenceServerException,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None,
    ) -> RoutedResult:
        m, alt = plan.metrics[chosen], plan.metrics[alternative]
        m.fell_back()
        logger.debug(
            "model %s version %s failed (%s); trying %s", self.model, chosen, first, alternative
        )
        started = time.perf_counter()
        try:
            result = self._send(alternative, inputs, outputs)
        except InferenceServerException as exc:
            alt.attempt_failed()
            m.request_failed()
            raise RoutingError(
                f"model {self.model}: version {chosen} failed ({first}) and fallback "
                f"version {alternative} failed too ({exc})"
            ) from exc
        except TritonUnavailableError:
            alt.attempt_failed()
            m.request_failed()
            raise
        alt.served(time.perf_counter() - started, fallback=True)
        return RoutedResult(result=result, version=alternative, fallback=True)

    def _send(
        self,
        version: str,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None,
    ) -> Any:
        """One attempt on ``version``, moving to the next server while one is unreachable
        or lacks the model or version (e.g. restarted and not yet reconciled).

        Raises InferenceServerException for Triton's answers (the caller may fall back to
        the other version) and TritonUnavailableError when no server could be reached.
        """
        single = self._single
        if single is not None:
            try:
                channel = self._shm
                if channel is not None and not channel.disabled:
                    try:
                        return channel.infer(version, inputs, outputs, self._timeout)
                    except SharedMemoryUnusable as exc:
                        logger.debug("shared memory unusable, plain gRPC instead: %s", exc)
                return single.client.infer(
                    self.triton_model,
                    inputs,
                    model_version=version,
                    outputs=outputs,
                    client_timeout=self._timeout,
                )
            except InferenceServerException as exc:
                if is_unreachable(exc):
                    raise TritonUnavailableError(f"Triton at {single.url}: {exc}") from exc
                raise
        last: InferenceServerException | None = None
        answered: InferenceServerException | None = None
        for server in self._server_order():
            try:
                return server.client.infer(
                    self.triton_model,
                    inputs,
                    model_version=version,
                    outputs=outputs,
                    client_timeout=self._timeout,
                )
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
        raise TritonUnavailableError(
            f"no Triton server reachable among {', '.join(self.urls)}: {last}"
        ) from last

    def _server_order(self) -> list[_Server]:
        """Round-robin order, servers recently found unreachable last (tried as last resort)."""
        servers = self._servers
        start = next(self._rr) % len(servers)
        rotated = servers[start:] + servers[:start]
        now = time.monotonic()
        up = [s for s in rotated if s.down_until <= now]
        return up + [s for s in rotated if s.down_until > now]

    # ---- YOLO ----------------------------------------------------------------------------

    def detect(
        self,
        image: npt.NDArray[np.uint8],
        *,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        key: Key | None = None,
        version: str | int | None = None,
    ) -> Detections:
        """Detect objects in one HxWx3 BGR uint8 image (as ``cv2.imread`` gives it)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise InvalidInputError(f"detect() needs an HxWx3 BGR image, got shape {shape}")
        if image.dtype != np.uint8:
            raise InvalidInputError(f"detect() needs a uint8 image, got {image.dtype}")
        spec = self._detector_spec()
        tensor, info = yolo.preprocess(image, spec.size, triton_to_np_dtype(spec.datatype))
        request = grpcclient.InferInput(spec.input_name, list(tensor.shape), spec.datatype)
        request.set_data_from_numpy(tensor)
        wanted = [grpcclient.InferRequestedOutput(spec.output_name)]
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        def decode(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            raw = result.as_numpy(spec.output_name)
            if raw is None:
                raise TritonError(f"model {self.model} returned no output {spec.output_name!r}")
            boxes, scores, class_ids = yolo.decode(raw, conf=conf, iou=iou, max_det=max_det)[0]
            return yolo.scale_boxes(boxes, info), scores, class_ids

        def compare(result: Any, sm: ShadowMetrics) -> None:
            (ref_boxes, _, ref_cls), shadow = found[0], decode(result)
            matched = yolo.match_count((ref_boxes, ref_cls), shadow)
            sm.add(boxes_reference=len(ref_cls), boxes_shadow=len(shadow[2]), boxes_matched=matched)

        routed = self._infer([request], wanted, key, version, mirror=False)
        found.append(decode(routed.result))
        if self._shadow and version is None and not routed.fallback:
            # Queued only now: the comparison reads ``found`` in the worker thread.
            self._maybe_mirror(self._plan, routed.version, [request], wanted, compare)
        boxes, scores, class_ids = found[0]
        return Detections(
            boxes=boxes,
            scores=scores,
            class_ids=class_ids,
            version=routed.version,
            fallback=routed.fallback,
            class_names=spec.class_names,
        )

    def _detector_spec(self) -> _DetectorSpec:
        spec = self._spec
        if spec is not None:
            return spec
        with self._spec_lock:
            if self._spec is None:
                self._spec = _DetectorSpec.from_config(self._model_config())
            return self._spec

    def _model_config(self) -> Any:
        """The model's config from the first server that answers (it is model-wide)."""
        last: InferenceServerException | None = None
        for server in self._server_order():
            try:
                return server.client.get_model_config(self.triton_model).config
            except InferenceServerException as exc:
                if not is_unreachable(exc):
                    raise TritonError(f"cannot read config of model {self.model}: {exc}") from exc
                last = exc
        raise TritonUnavailableError(
            f"no Triton server reachable among {', '.join(self.urls)}: {last}"
        ) from last

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the poller and close the gRPC channels; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._shadow_worker is not None:
            try:
                self._shadow_queue.put(None, timeout=5)
            except queue.Full:
                logger.debug("shadow queue full at close; worker left to exit with the process")
            else:
                self._shadow_worker.join(timeout=10)
        if self._poller.is_alive() and self._poller is not threading.current_thread():
            self._poller.join(timeout=5)
        if self._shm is not None:
            self._shm.close()
        for server in self._servers + self._retired:
            try:
                server.client.close()
            except Exception as exc:  # closing must not mask the caller's own error
                logger.debug("closing client for %s: %s", server.url, exc)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        table = self._plan.table
        weights = table.weights if table else None
        return f"Router(model={self.model!r}, urls={list(self.urls)!r}, weights={weights})"
