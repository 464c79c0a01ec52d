"""How we reach Triton servers: addresses (fleets, DNS names), TLS and extra headers.

Shared by the manager (``triton.py``) and the ``Router`` so both speak to a fleet behind
an auth proxy the same way. Header values (tokens) are secrets: they are never logged,
and ``repr`` shows only header names.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from repo_manager.discovery import DNS_SCHEME, resolve_name, split_url
from repo_manager.errors import InvalidInputError

__all__ = [
    "CONTROL_HEADER",
    "CONTROL_KEY_ENV",
    "CONTROL_KEY_FILE_ENV",
    "GRPC_CONTROL_HEADER",
    "RESTRICTED_ANSWER",
    "RESTRICTED_PROTOCOLS",
    "GrpcSecurity",
    "control_key",
    "default_control_key_file",
    "ensure_control_key",
    "expand_urls",
    "is_unreachable",
    "make_grpc_client",
    "parse_headers",
    "restricted_flags",
]

#: The header that carries the control key, and where the key comes from: the variable
#: itself, else the file it names, else the file ``serve`` writes (``default_control_key_file``).
#: Over HTTP it is sent as named; over gRPC Triton 2.51 expects the name behind its own
#: prefix (checked: "This protocol is restricted, expecting header
#: 'triton-grpc-protocol-repo-manager-control-key'"), so gRPC clients send ``GRPC_CONTROL_HEADER``.
CONTROL_HEADER = "repo-manager-control-key"
GRPC_CONTROL_HEADER = f"triton-grpc-protocol-{CONTROL_HEADER}"
#: What Triton answers a call restricted to the key (gRPC status UNAVAILABLE, HTTP 403).
RESTRICTED_ANSWER = "is restricted, expecting header"
CONTROL_KEY_ENV = "REPO_MANAGER_CONTROL_KEY"
CONTROL_KEY_FILE_ENV = "REPO_MANAGER_CONTROL_KEY_FILE"
#: What Triton serves only to callers with the key: loading and unloading models (a
#: ``model.py`` of one's own runs on load), shared-memory registration, and the trace and
#: log settings (both take a file path to write). Inference, health, metadata, model
#: configs and statistics stay open.
RESTRICTED_PROTOCOLS = ("model-repository", "shared-memory", "trace", "logging")


@dataclass(kw_only=True, frozen=True)
class GrpcSecurity:
    """TLS files and extra metadata for every gRPC call to Triton.

    ``tls`` alone uses the system roots; ``ca`` pins a CA; ``cert``+``key`` add a client
    certificate (mutual TLS). ``headers`` go on every call (e.g. ``authorization`` for an
    auth proxy in front of Triton).
    """

    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidInputError("give --tls-cert and --tls-key together (mutual TLS)")
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            if path is not None and not Path(path).is_file():
                raise InvalidInputError(f"TLS {what} file {path} not found")

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(p is not None for p in (self.ca, self.cert, self.key))

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``tritonclient.grpc.InferenceServerClient``."""
        if not self.uses_tls:
            return {}
        return {
            "ssl": True,
            "root_certificates": self.ca,
            "private_key": self.key,
            "certificate_chain": self.cert,
        }

    def __repr__(self) -> str:  # header values may be tokens: names only
        return (
            f"GrpcSecurity(tls={self.uses_tls}, ca={self.ca!r}, cert={self.cert!r}, "
            f"key={self.key!r}, headers={sorted(self.headers)!r})"
        )


class _Headers(InferenceServerClientPlugin):
    """Adds fixed metadata to every request of a client."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def __call__(self, request: Any) -> None:
        request.headers.update(self._headers)


def default_control_key_file() -> Path:
    """Where ``serve`` keeps the key it made (readable by its user only)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "repo-manager" / "control-key"


def control_key() -> str | None:
    """The control key this process holds (``CONTROL_KEY_ENV``, else the file
    ``CONTROL_KEY_FILE_ENV`` names, else ``default_control_key_file``), or None."""
    given = os.environ.get(CONTROL_KEY_ENV, "").strip()
    if given:
        return given
    named = os.environ.get(CONTROL_KEY_FILE_ENV, "").strip()
    path = Path(named) if named else default_control_key_file()
    try:
        found = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if named:
            raise InvalidInputError(
                f"{CONTROL_KEY_FILE_ENV} names {path}, which is missing"
            ) from None
        return None
    except (OSError, UnicodeDecodeError) as exc:  # never the content: it is the key
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise InvalidInputError(f"cannot read the control key file {path}: {why}") from exc
    return found or None


def ensure_control_key() -> tuple[str, str]:
    """The key this process holds, else a new random one written to
    ``default_control_key_file`` (mode 0600, created whole): (key, where it is kept)."""
    key = control_key()
    if key is not None:
        named = os.environ.get(CONTROL_KEY_FILE_ENV, "").strip()
        where = CONTROL_KEY_ENV if os.environ.get(CONTROL_KEY_ENV, "").strip() else None
        return key, where or named or str(default_control_key_file())
    path = default_control_key_file()
    key = secrets.token_hex(32)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(key + "\n")
        os.link(staged, path)  # fails if another process made one meanwhile: use that
        os.unlink(staged)
    except FileExistsError:
        staged.unlink(missing_ok=True)
        return ensure_control_key()
    except OSError as exc:
        raise InvalidInputError(f"cannot write the control key {path}: {exc.strerror}") from exc
    return key, str(path)


def restricted_flags(key: str) -> list[str]:
    """tritonserver's flags that serve ``RESTRICTED_PROTOCOLS`` only to callers sending
    ``CONTROL_HEADER: key`` (gRPC metadata, or an HTTP header)."""
    if not key or any(c in key for c in " ,:=\n\r"):
        raise InvalidInputError("the control key must be non-empty, without spaces , : or =")
    protocols = ",".join(RESTRICTED_PROTOCOLS)
    return [
        f"--grpc-restricted-protocol={protocols}:{CONTROL_HEADER}={key}",
        f"--http-restricted-api={protocols}:{CONTROL_HEADER}={key}",
    ]


def make_grpc_client(url: str, security: GrpcSecurity | None = None) -> Any:
    """A tritonclient gRPC client for ``url`` with TLS and headers applied, the control key
    (``control_key``) among them when this process holds one and they do not name it."""
    security = security or GrpcSecurity()
    try:
        client = grpcclient.InferenceServerClient(url=url, **security.client_kwargs())
    except OSError as exc:
        raise InvalidInputError(f"cannot read TLS files: {exc.strerror}") from exc
    headers = dict(security.headers)
    if GRPC_CONTROL_HEADER not in headers:
        key = control_key()
        if key is not None:
            headers[GRPC_CONTROL_HEADER] = key
    if headers:
        client.register_plugin(_Headers(headers))
    return client


def is_unreachable(exc: InferenceServerException) -> bool:
    """True when the server could not be reached; False when it answered, even late.

    The one rule for the manager (``triton.py``) and the ``Router``. gRPC UNAVAILABLE is
    both a connection that failed and Triton's answer for a version that is not ready
    ("Request for unknown model: 'm' version 2 is not at ready state"): only Triton's own
    messages name the model. DEADLINE_EXCEEDED is *not* unreachable: it says only that the
    answer came late, from a server that may be live and busy (a slow canary under the
    Router's ``timeout``, a slow index call). Calling that unreachable would make the Router
    mark a live server down for every version and skip the fallback to the other version,
    which exists for exactly a version that fails. A server really out of reach fails fast
    with UNAVAILABLE (measured: connection refused and a refused TLS handshake both in
    well under a second), so that is the only status that counts.
    """
    message = exc.message() or str(exc)
    lowered = message.lower()
    return (
        exc.status() == "StatusCode.UNAVAILABLE"
        and "model" not in lowered
        and RESTRICTED_ANSWER not in lowered  # a locked control plane answered: reachable
    )


def parse_headers(values: Iterable[str]) -> dict[str, str]:
    """``K=V`` strings -> metadata (gRPC wants lower-case keys)."""
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition("=")
        name = name.strip().lower()
        if not sep:
            # Never echo the text: without '=' it may be the token itself.
            raise InvalidInputError("invalid --header: use NAME=VALUE")
        if not name or any(c in name for c in " :\n\r"):
            raise InvalidInputError(f"invalid header name {name!r}: use NAME=VALUE")
        headers[name] = content
    return headers


def expand_urls(urls: Sequence[str], *, resolve: bool) -> list[str]:
    """Each url as given or, with ``resolve``, one per address its DNS name resolves to now.

    Opt-in, because ``localhost`` resolving to both 127.0.0.1 and ::1 must not turn one
    server into two (one of them unreachable). ``dns://`` entries (``discovery``) are
    left for the caller, which resolves them again over time.
    """
    expanded: list[str] = []
    for url in urls:
        if url.startswith(DNS_SCHEME):
            entries = [url]
        else:
            host, port = split_url(url)
            entries = resolve_name(host, port) if resolve else [url]
        expanded.extend(e for e in entries if e not in expanded)
    return expanded
