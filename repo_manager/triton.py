"""Model control on one or many Triton servers, over tritonclient's gRPC client.

tritonclient errors are translated here, where they enter: an unreachable server becomes
``TritonUnavailableError``, anything Triton refuses becomes ``TritonError``, both chained.
Loads always pass a config override, because that is how a canary is loaded beside the
stable (``version_policy: specific [stable, canary]``) without touching the disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from repo_manager.errors import TritonError, TritonUnavailableError, VersionNotReadyError
from repo_manager.modelconfig import config_to_json, with_version_policy
from repo_manager.transport import GrpcSecurity, is_unreachable, make_grpc_client
from repo_manager.unpinned.config import public_route

__all__ = ["ServerVersions", "TritonControl", "TritonFleet", "VersionState"]

T = TypeVar("T")
DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"  # gRPC: a client deadline passed
#: Triton's repository index as tritonclient returns it in JSON form.
Index = dict[str, Any]


@dataclass(kw_only=True, frozen=True)
class VersionState:
    """One version of a model as a server reports it."""

    version: str
    state: str
    reason: str = ""


@dataclass(kw_only=True, frozen=True)
class ServerVersions:
    """What one server has of a model (``error`` set when it could not be asked)."""

    url: str
    versions: tuple[VersionState, ...] = ()
    #: What the public name does with unpinned requests (``unpinned.public_route``: the
    #: stable version it pins, or "weighted ..."); None when it is not READY.
    public: str | None = None
    error: str | None = None

    @property
    def ready(self) -> frozenset[str]:
        return frozenset(v.version for v in self.versions if v.state == "READY")


class TritonControl:
    """Model-control calls against one server."""

    def __init__(
        self, url: str, *, request_timeout: float = 10.0, security: GrpcSecurity | None = None
    ) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self._client = make_grpc_client(url, security)

    def _call(
        self, what: str, call: Callable[[], T], *, late: Callable[[], TritonError] | None = None
    ) -> T:
        """``call``, its errors translated; ``late`` makes the error of a passed deadline."""
        try:
            return call()
        except InferenceServerException as exc:
            if late is not None and exc.status() == DEADLINE_EXCEEDED:
                raise late() from exc
            if is_unreachable(exc):
                raise TritonUnavailableError(f"Triton unreachable at {self.url}") from exc
            lines = (exc.message() or str(exc)).strip().splitlines()
            message = lines[0] if lines else f"no message ({exc.status() or 'no status'})"
            raise TritonError(f"Triton at {self.url} refused to {what}: {message}") from exc

    def check_reachable(self) -> None:
        """Raise TritonUnavailableError unless the server answers live."""
        live = self._call(
            "answer",
            lambda: self._client.is_server_live(client_timeout=self.request_timeout),
        )
        if not live:
            raise TritonUnavailableError(f"Triton at {self.url} is not live")

    def server_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = self._call(
            "report metadata",
            lambda: self._client.get_server_metadata(
                as_json=True, client_timeout=self.request_timeout
            ),
        )
        return metadata

    def load(
        self,
        model: str,
        config: model_config_pb2.ModelConfig,
        versions: Sequence[str],
        *,
        timeout: float,
    ) -> None:
        """Load exactly ``versions`` of ``model`` (Triton unloads the others) within
        ``timeout`` s: Triton answers when the load ended, maybe never (a dead stub)."""
        override = config_to_json(with_version_policy(config, versions))
        self._call(
            f"load {model} versions {','.join(versions)}",
            lambda: self._client.load_model(model, config=override, client_timeout=timeout),
            late=lambda: self._not_loaded(model, versions, timeout),
        )

    def load_public(
        self, name: str, config: model_config_pb2.ModelConfig, *, timeout: float
    ) -> None:
        """Load the public name as ``config`` says (an ensemble pinning stable, or the
        weighted model); Triton answers with the loaded one until the new one is ready."""
        override = config_to_json(config)
        self._call(
            f"load {name}",
            lambda: self._client.load_model(name, config=override, client_timeout=timeout),
            late=lambda: self._not_loaded(name, ["1"], timeout),
        )

    def _not_loaded(self, model: str, versions: Sequence[str], timeout: float) -> TritonError:
        """The error of a load past its deadline: each version, as Triton's index says."""
        try:
            states = {v.version: v for v in self.versions(model)}
        except TritonError as exc:
            said = f"its index did not answer either: {exc}"
        else:
            said = "; ".join(_said(v, states.get(v)) for v in versions) or "nothing"
        return VersionNotReadyError(
            f"{model} on {self.url}: load not done within {timeout:g}s (Triton: {said})"
        )

    def public_route(self, name: str, *, index: Index | None = None) -> str | None:
        """What the loaded public name ``name`` does with an unpinned request
        (``unpinned.public_route``; None when it is not READY); ``index`` is a repository
        index already read (else it is read here)."""
        if not any(v.state == "READY" for v in self.versions(name, index=index)):
            return None
        document: dict[str, Any] = self._call(
            f"report the config of {name}",
            lambda: self._client.get_model_config(
                name, as_json=True, client_timeout=self.request_timeout
            ),
        )
        try:
            config = json_format.ParseDict(
                document.get("config", {}),
                model_config_pb2.ModelConfig(),
                ignore_unknown_fields=True,
            )
        except json_format.ParseError as exc:
            raise TritonError(f"Triton at {self.url} sent an unreadable config of {name}") from exc
        return public_route(config)

    def unload(self, model: str) -> None:
        self._call(
            f"unload {model}",
            lambda: self._client.unload_model(model, client_timeout=self.request_timeout),
        )

    def index(self) -> Index:
        """The server's repository index: every model version it knows, with its state."""
        index: Index = self._call(
            "list its repository",
            lambda: self._client.get_model_repository_index(
                as_json=True, client_timeout=self.request_timeout
            ),
        )
        return index

    def versions(self, model: str, *, index: Index | None = None) -> tuple[VersionState, ...]:
        """Versions of ``model`` that the server knows, from its repository index (``index``
        when the caller already read it)."""
        index = self.index() if index is None else index
        found = [
            VersionState(
                version=str(entry["version"]),
                state=str(entry.get("state", "")),
                reason=str(entry.get("reason", "")),
            )
            for entry in index.get("models", [])
            if entry.get("name") == model and entry.get("version")
        ]
        return tuple(sorted(found, key=lambda v: int(v.version)))

    def wait_versions(
        self, model: str, *, ready: Sequence[str], gone: Sequence[str] = (), timeout: float
    ) -> None:
        """Poll until every ``ready`` version is READY and no ``gone`` version is.

        Triton's unload is asynchronous, so the index is polled rather than trusted once.
        """
        deadline = time.monotonic() + timeout
        while True:
            states = {v.version: v for v in self.versions(model)}
            missing = [v for v in ready if states.get(v) is None or states[v].state != "READY"]
            # Gone means unloaded for good (memory freed), not merely no longer READY.
            lingering = [v for v in gone if v in states and states[v].state != "UNAVAILABLE"]
            if not missing and not lingering:
                return
            if time.monotonic() >= deadline:
                details = []
                for v in missing:
                    reason = states[v].reason if v in states else "not in index"
                    details.append(f"{v} not READY ({reason or states[v].state})")
                details.extend(f"{v} still {states[v].state}" for v in lingering)
                raise VersionNotReadyError(
                    f"{model} on {self.url}: {'; '.join(details)} after {timeout:.0f}s"
                )
            time.sleep(0.1)

    def close(self) -> None:
        self._client.close()


class TritonFleet:
    """The same model-control call on every server of a fleet, in order."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        request_timeout: float = 10.0,
        security: GrpcSecurity | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a fleet needs at least one server")
        self.request_timeout = request_timeout
        self.security = security
        self.servers = [
            TritonControl(url, request_timeout=request_timeout, security=security) for url in urls
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def set_urls(self, urls: Sequence[str]) -> None:
        """Become the fleet at ``urls`` (a DNS fleet re-resolved): known servers keep their
        connection, new ones are added, those gone are closed."""
        if not urls:
            raise ValueError("a fleet needs at least one server")
        known = {server.url: server for server in self.servers}
        self.servers = [
            known.pop(url)
            if url in known
            else TritonControl(url, request_timeout=self.request_timeout, security=self.security)
            for url in urls
        ]
        for gone in known.values():
            gone.close()

    def check_reachable(self) -> None:
        """Raise one error naming every server that does not answer (not just the first)."""
        down = []
        for server in self.servers:
            try:
                server.check_reachable()
            except TritonUnavailableError as exc:
                down.append((server.url, exc))
        if len(self.servers) == 1 and down:
            raise down[0][1]
        if down:
            names = ", ".join(url for url, _ in down)
            raise TritonUnavailableError(
                f"Triton unreachable at {names} ({len(down)} of {len(self.servers)} servers); "
                "start it or leave it out with --url, then run reconcile"
            ) from down[0][1]

    def server_versions(self) -> dict[str, str]:
        """Each server's Triton version (from its metadata), by url."""
        return {s.url: str(s.server_metadata().get("version", "")) for s in self.servers}

    def apply(
        self,
        model: str,
        config: model_config_pb2.ModelConfig,
        versions: Sequence[str],
        *,
        gone: Sequence[str] = (),
        timeout: float,
        only: Sequence[str] | None = None,
    ) -> None:
        """Load ``versions`` everywhere and wait until they are READY and ``gone`` are not.

        Every server is tried even when one fails, so that a rollback (an ``apply`` of the
        previous versions) reaches every server that answers; the error names them all.
        ``only`` limits the call to those urls (reconcile of a restarted server).
        """
        targets = self._targets(only)
        failures: list[TritonError] = []
        loaded = []
        for server in targets:
            try:
                server.load(model, config, versions, timeout=timeout)
                loaded.append(server)
            except TritonError as exc:
                failures.append(exc)
        for server in loaded:
            try:
                server.wait_versions(model, ready=versions, gone=gone, timeout=timeout)
            except TritonError as exc:
                failures.append(exc)
        _raise_failures(failures, len(targets))

    def point_public(
        self,
        name: str,
        config: model_config_pb2.ModelConfig,
        *,
        timeout: float,
        only: Sequence[str] | None = None,
    ) -> list[str]:
        """Make the public name ``name`` route unpinned requests as ``config`` does, everywhere.

        A server whose public name already routes so is left alone (a load call would
        re-create it for nothing). Returns the urls where it moved; like ``apply``, every
        server is tried and one error names each that failed.
        """
        wanted = public_route(config)
        targets = self._targets(only)
        failures: list[TritonError] = []
        moved = []
        for server in targets:
            try:
                if server.public_route(name) == wanted:
                    continue
                server.load_public(name, config, timeout=timeout)
                server.wait_versions(name, ready=["1"], timeout=timeout)
                moved.append(server.url)
            except TritonError as exc:
                failures.append(exc)
        _raise_failures(failures, len(targets))
        return moved

    def _targets(self, only: Sequence[str] | None) -> list[TritonControl]:
        return [s for s in self.servers if only is None or s.url in only]

    def unload(self, *models: str, timeout: float) -> None:
        """Unload each of ``models`` on every server (the public name first, then its
        versions model, so no client is left with an alias to nothing), and wait until
        Triton let go of every version (a load in flight ends first: only then may the
        files go, or a python stub starting on them hangs the model)."""
        failures: list[TritonError] = []
        for server in self.servers:
            for model in models:
                try:
                    server.unload(model)
                    known = [v.version for v in server.versions(model)]
                    server.wait_versions(model, ready=[], gone=known, timeout=timeout)
                except TritonError as exc:
                    failures.append(exc)
        _raise_failures(failures, len(self.servers))

    def survey(self, model: str, *, alias: str | None = None) -> list[ServerVersions]:
        """Each server's view of ``model`` (and of the public name ``alias`` pointing into
        it); an unreachable server is reported, not raised."""
        report = []
        for server in self.servers:
            try:
                index = server.index()  # one read serves both models
                report.append(
                    ServerVersions(
                        url=server.url,
                        versions=server.versions(model, index=index),
                        public=server.public_route(alias, index=index) if alias else None,
                    )
                )
            except TritonError as exc:
                report.append(ServerVersions(url=server.url, error=str(exc)))
        return report

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _said(version: str, state: VersionState | None) -> str:
    """What Triton's index says of one version (its first reason line)."""
    if state is None:
        return f"version {version} not in its index"
    reason = state.reason.splitlines()[0] if state.reason else ""
    return f"version {version} {state.state}" + (f" ({reason})" if reason else "")


def _raise_failures(failures: list[TritonError], targets: int) -> None:
    """Raise nothing, the one failure, or one error naming every failed server."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        first = failures[0]
        error = type(first) if all(type(f) is type(first) for f in failures) else TritonError
        raise error(
            f"{len(failures)} of {targets} servers failed: " + "; ".join(str(f) for f in failures)
        ) from first
