"""Model control on one Triton server, over tritonclient's gRPC client.

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

from repo_manager.errors import (
    TritonError,
    TritonHungError,
    TritonUnavailableError,
    VersionNotReadyError,
)
from repo_manager.modelconfig import config_to_json, with_version_policy
from repo_manager.transport import (
    CONTROL_KEY_ENV,
    CONTROL_KEY_FILE_ENV,
    RESTRICTED_ANSWER,
    GrpcSecurity,
    control_key,
    is_unreachable,
    make_grpc_client,
)
from repo_manager.unpinned.config import public_route

__all__ = ["Index", "ServerVersions", "TritonControl", "VersionState"]

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
            if exc.status() == DEADLINE_EXCEEDED:
                if late is not None:
                    raise late() from exc
                raise TritonHungError(
                    f"Triton at {self.url} did not answer within {self.request_timeout:g}s "
                    "(hung or stopped: it takes connections and answers nothing); leave it "
                    "out with --url until it answers again"
                ) from exc
            if is_unreachable(exc):
                raise TritonUnavailableError(f"Triton unreachable at {self.url}") from exc
            if RESTRICTED_ANSWER in (exc.message() or str(exc)):
                raise TritonError(
                    f"Triton at {self.url} refused to {what}: its model control needs the "
                    f"control key, and this process has {'another' if control_key() else 'none'}"
                    f" (set {CONTROL_KEY_ENV} or {CONTROL_KEY_FILE_ENV})"
                ) from exc
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


def _said(version: str, state: VersionState | None) -> str:
    """What Triton's index says of one version (its first reason line)."""
    if state is None:
        return f"version {version} not in its index"
    reason = state.reason.splitlines()[0] if state.reason else ""
    return f"version {version} {state.state}" + (f" ({reason})" if reason else "")
