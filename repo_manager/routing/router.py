"""The client-side Router: weighted, sticky canary routing between versions of one model.

Triton has no traffic splitting, and a request without a version goes to the highest READY
version, so the Router pins ``model_version`` on every request and picks the version from
the routing table the manager writes into the repository (``repo_manager.state``). The
Router wires the parts together: the table and the plan in force (``table``), where a key
lands (``plan``), the servers (``servers``), shadow traffic (``shadow``) and YOLO pre- and
post-processing (``detection``); what it does itself is one request's choice and fallback.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from repo_manager.discovery import has_dns, resolve_urls
from repo_manager.errors import InvalidInputError, RoutingError, TritonUnavailableError
from repo_manager.metrics.router import RouterMetrics, VersionMetrics
from repo_manager.names import versions_model_name
from repo_manager.repository import ModelRepository
from repo_manager.routing.detection import Detections, Detector
from repo_manager.routing.plan import Attributes, Key, RoutePlan
from repo_manager.routing.servers import ClientFactory, Inputs, Outputs, ServerPool, shm_wanted
from repo_manager.routing.shadow import ShadowMirror
from repo_manager.routing.subscriber import check_watch_url
from repo_manager.routing.table import TableWatcher
from repo_manager.shm import SharedMemoryChannel
from repo_manager.state import RoutingTable
from repo_manager.storage import LocalStorage, open_storage
from repo_manager.transport import GrpcSecurity, make_grpc_client

__all__ = ["DEFAULT_TIMEOUT", "WATCH_URL_ENV", "RoutedResult", "Router"]

logger = logging.getLogger(__name__)

#: Where Routers find the manager's watch endpoint when not given ``watch_url``.
WATCH_URL_ENV = "REPO_MANAGER_WATCH_URL"
#: Seconds one attempt may take by default (the manager's calls take as long at most).
DEFAULT_TIMEOUT = 10.0


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
    #: True when the request's attributes put it in the canary's cohort.
    inside: bool = False
    #: The server (HOST:PORT) that answered.
    url: str | None = None

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.result.as_numpy(name)


def _shut_down(table: TableWatcher, shadow: ShadowMirror, servers: ServerPool) -> None:
    """What closing a Router does; holds no reference to the Router (its finalizer, which
    the garbage collector may run in any thread: whatever fails, regions are released)."""
    try:
        table.close()
        shadow.close()
    finally:
        servers.close()


def _where_held(table: TableWatcher, servers: ServerPool) -> Callable[..., Any]:
    """One attempt on a version, only on the servers the plan in force says hold it (the
    shadow's sender; no reference to the Router, which its finalizer must not keep)."""

    def send(version: str, inputs: Inputs, outputs: Outputs) -> Any:
        return servers.send(version, inputs, outputs, among=table.plan.where.get(version))

    return send


class Router:
    """Sends inference requests for one model to its stable and canary versions."""

    def __init__(
        self,
        model: str,
        url: str | Sequence[str] = "localhost:8001",
        repository: str | os.PathLike[str] = "./model_repository",
        *,
        poll_interval: float = 0.2,
        timeout: float | None = DEFAULT_TIMEOUT,
        server_retry_after: float = 1.0,
        client_factory: ClientFactory | None = None,
        shadow: float = 0.0,
        shadow_queue: int = 32,
        security: GrpcSecurity | None = None,
        s3_endpoint: str | None = None,
        resolve_interval: float = 10.0,
        shared_memory: bool | str = "auto",
        metrics: RouterMetrics | None = None,
        watch_url: str | None = None,
        fallback_interval: float | None = None,
        clock: Callable[[], float] = time.time,
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
            poll_interval: seconds between checks of the routing table's change token
                when no watch endpoint is given.
            timeout: client-side deadline per attempt, in seconds (None: none). In a fleet
                a server that misses it leaves the rotation until a probe (``servers``).
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
            metrics: where the per-version counters go (default: the process-wide
                ``RouterMetrics.default()`` on prometheus-client's default registry).
            watch_url: the long-running manager's watch endpoint, ``http://HOST:PORT`` (its
                ``reconcile --watch --metrics-port``; default: ``REPO_MANAGER_WATCH_URL``;
                "" for none). The manager then pushes every new table and the Router
                reads storage only while the endpoint is unreachable (said once in the
                log and in ``repo_manager_router_table_source``).
            fallback_interval: seconds between storage checks while the watch endpoint is
                unreachable, jittered up to 25% longer (default: 30 on S3, where each is
                a request; ``poll_interval`` for a folder, where it is a stat).
            clock: epoch seconds now, for a cohort rule's hour window (tests move it).
        """
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise InvalidInputError("Router needs at least one Triton url")
        addresses = tuple(urls) if has_dns(urls) else ()
        if addresses:
            urls = resolve_urls(urls)
        if poll_interval <= 0:
            raise InvalidInputError(f"poll_interval must be positive, got {poll_interval}")
        self.model = model
        #: The Triton model the Router calls: the one holding the version folders.
        self.triton_model = versions_model_name(model)
        self.metrics = metrics or RouterMetrics.default()
        storage = open_storage(os.fspath(repository), s3_endpoint=s3_endpoint)
        if watch_url is None:
            watch_url = os.environ.get(WATCH_URL_ENV, "")
        if fallback_interval is None:
            fallback_interval = poll_interval if isinstance(storage, LocalStorage) else 30.0
        if fallback_interval <= 0:
            raise InvalidInputError(f"fallback_interval must be positive, got {fallback_interval}")
        factory = client_factory or (lambda u: make_grpc_client(u, security))
        clients = [(u, factory(u)) for u in urls]
        channel: SharedMemoryChannel | None = None
        # A dns:// fleet may change under the Router: shared memory is for one fixed server.
        if (
            len(clients) == 1
            and not addresses
            and shm_wanted(shared_memory, clients[0][0], custom_client=client_factory is not None)
        ):
            channel = SharedMemoryChannel(clients[0][1], self.triton_model)
        self._servers = ServerPool(
            model,
            self.triton_model,
            clients,
            factory=factory,
            timeout=timeout,
            retry_after=server_retry_after,
            channel=channel,
            addresses=addresses,
            resolve_interval=resolve_interval,
        )
        self._table = TableWatcher(
            model,
            storage,
            poll_interval=poll_interval,
            watch_url=check_watch_url(watch_url) if watch_url else None,
            fallback_interval=fallback_interval,
            on_poll=self._servers.follow_dns if addresses else None,
            metrics=self.metrics,
            clock=clock,
        )
        self._shadow = ShadowMirror(
            model,
            _where_held(self._table, self._servers),
            queue_size=shadow_queue,
            metrics=self.metrics,
        )
        facts = ModelRepository(storage)  # each version's class names: its manifest's
        self._detector = Detector(
            model, self._servers.model_config, lambda v: facts.class_names(model, v)
        )
        self._closed = False
        # close() without the Router: a dropped Router, and every live one at interpreter
        # exit, still stops its threads and releases its shared-memory regions.
        self._finalizer = weakref.finalize(
            self, _shut_down, self._table, self._shadow, self._servers
        )
        self.set_shadow(shadow)
        self.refresh()
        self._table.start()

    # ---- routing table -------------------------------------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        """The servers requests go to now (a ``dns://`` fleet's as last resolved)."""
        return self._servers.urls

    @property
    def hung_servers(self) -> list[str]:
        """Servers out of rotation for a missed deadline, until a probe answers."""
        return self._servers.out_of_rotation()

    @property
    def table(self) -> RoutingTable | None:
        """The routing table in force (None until the model's state document exists)."""
        return self._table.plan.table

    @property
    def plan(self) -> RoutePlan:
        return self._table.plan

    @property
    def watching(self) -> bool:
        """True while the manager's watch pushes the table (False: following storage)."""
        return self._table.watching

    def refresh(self) -> RoutingTable | None:
        """Re-read the routing table now if it changed; returns the one in force (a missing
        or unreadable document keeps the last good one)."""
        return self._table.refresh()

    def rediscover(self) -> tuple[str, ...]:
        """Resolve ``dns://`` urls again; serve the fleet they name (a failed lookup keeps it)."""
        return self._servers.rediscover()

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until the table in force has at least ``generation``; False on timeout."""
        return self._table.wait_for_generation(generation, timeout)

    # ---- inference -----------------------------------------------------------------------

    def choose(self, key: Key | None = None, attributes: Attributes | None = None) -> str:
        """The version the next request with this key and attributes would be sent to."""
        return self._table.plan.choose(key, attributes)

    def infer(
        self,
        inputs: Inputs,
        outputs: Outputs = None,
        key: Key | None = None,
        version: str | int | None = None,
        attributes: Attributes | None = None,
    ) -> RoutedResult:
        return self._infer(inputs, outputs, key, version, attributes, mirror=True)

    def _infer(
        self,
        inputs: Inputs,
        outputs: Outputs,
        key: Key | None,
        version: str | int | None,
        attributes: Attributes | None,
        *,
        mirror: bool,
    ) -> RoutedResult:
        """Run one request on the routed version; on failure retry once on the other one.

        ``attributes`` (``{"line": "3"}``) put the request in the canary's cohort when the
        table's rule matches them (``RoutePlan.inside``); ``key`` makes the choice sticky
        inside and outside the cohort alike; ``version`` pins it (no fallback then: a caller
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
        plan = self._table.plan
        inside = False
        if version is None:
            inside = plan.inside(attributes)
            chosen = plan.pick(key, inside)
            alternative = plan.fallback.get(chosen)
        else:
            chosen, alternative = str(version), None
        among = plan.where.get(chosen) if plan.where else None
        if among is not None and alternative is not None and not self._servers.reaches(among):
            # A canary on none of the servers this Router reaches: stable answers.
            chosen, alternative, among = alternative, None, None
        m = self._series(plan, chosen, inside)
        started = time.perf_counter()
        try:
            result = self._servers.send(chosen, inputs, outputs, among=among)
        except InferenceServerException as exc:
            m.attempt_failed()
            if alternative is None:
                m.request_failed()
                raise RoutingError(
                    f"model {self.model} version {chosen} failed: {exc}"
                    + ("" if version is not None else " (no other version to fall back to)")
                ) from exc
            return self._fall_back(plan, chosen, alternative, exc, inputs, outputs, inside)
        except TritonUnavailableError as exc:
            m.attempt_failed()
            if among is not None and alternative is not None:
                # Every server of a canary limited to some is down: the others serve stable.
                return self._fall_back(plan, chosen, alternative, exc, inputs, outputs, inside)
            m.request_failed()
            raise
        m.served(time.perf_counter() - started)
        if mirror and self._shadow.share and version is None:
            self._shadow.maybe_mirror(plan, chosen, inputs, outputs, None)
        return RoutedResult(
            result=result, version=chosen, inside=inside, url=self._servers.last_url()
        )

    def _series(self, plan: RoutePlan, version: str, inside: bool = False) -> VersionMetrics:
        """The version's counters inside or outside the cohort: the plan's (looked up once
        per table), else the store's."""
        found = (plan.inside_metrics if inside else plan.metrics).get(version)
        if found is not None:
            return found
        return self.metrics.version(self.model, version, plan.label(inside))

    def _fall_back(
        self,
        plan: RoutePlan,
        chosen: str,
        alternative: str,
        first: InferenceServerException | TritonUnavailableError,
        inputs: Inputs,
        outputs: Outputs,
        inside: bool,
    ) -> RoutedResult:
        m, alt = self._series(plan, chosen, inside), self._series(plan, alternative, inside)
        m.fell_back()
        logger.debug(
            "model %s version %s failed (%s); trying %s", self.model, chosen, first, alternative
        )
        started = time.perf_counter()
        try:
            # On another server if there is one: the failure may be the server's.
            result = self._servers.send(
                alternative,
                inputs,
                outputs,
                avoid=self._servers.last_url(),
                among=plan.where.get(alternative),
            )
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
        return RoutedResult(
            result=result,
            version=alternative,
            fallback=True,
            inside=inside,
            url=self._servers.last_url(),
        )

    def set_shadow(self, share: float) -> None:
        """Mirror ``share`` (0..1) of stable's requests to the canary from now on.

        ``infer`` mirrors the caller's own ``InferInput`` objects after answering: do not
        modify them afterwards while shadowing (``detect`` builds its own).
        """
        self._shadow.set_share(share)

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
        attributes: Attributes | None = None,
    ) -> Detections:
        """Detect objects in one HxWx3 BGR uint8 image (as ``cv2.imread`` gives it);
        ``key``, ``version`` and ``attributes`` route it as ``infer`` does."""
        request = self._detector.request(image, conf=conf, iou=iou, max_det=max_det)
        routed = self._infer(
            request.inputs, request.outputs, key, version, attributes, mirror=False
        )
        found = request.decode(routed.result)
        if self._shadow.share and version is None and not routed.fallback:
            # Queued only now: the comparison needs the user's detections.
            self._shadow.maybe_mirror(
                self._table.plan,
                routed.version,
                request.inputs,
                request.outputs,
                request.comparison(found, routed.version),
            )
        detections = request.detections(found, version=routed.version, fallback=routed.fallback)
        # What each version sees, for the live detection gates (a fast, error-free canary
        # that finds nothing passes every gate on errors and latency).
        self._series(self._table.plan, routed.version, routed.inside).detected(
            len(detections), float(detections.scores.sum())
        )
        return detections

    def class_names(self, version: str | int) -> tuple[str, ...]:
        """The classes ``version`` names (its own: a canary may add or rename some)."""
        return self._detector.names_of(str(version))

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the poller, release shared memory and close the gRPC channels; idempotent
        (also done when the Router is garbage-collected or the interpreter exits)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        table = self._table.plan.table
        weights = table.weights if table else None
        return f"Router(model={self.model!r}, urls={list(self.urls)!r}, weights={weights})"
