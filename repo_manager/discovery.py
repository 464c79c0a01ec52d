"""A Triton fleet named by DNS: one name, one server per address it resolves to.

``dns://NAME:PORT`` (e.g. a Kubernetes headless Service,
``dns://triton.repo-manager.svc.cluster.local:8001``) stands for every A/AAAA record of
NAME. It is resolved again on every reconcile pass of the manager and every
``resolve_interval`` by a Router, so a replica that joins gets its models loaded and its
share of traffic, and one that leaves is dropped, without a restart. Plain ``HOST:PORT``
entries pass through as they are.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

from repo_manager.errors import FleetResolutionError, InvalidInputError

__all__ = ["DNS_SCHEME", "has_dns", "resolve_name", "resolve_urls", "split_url"]

DNS_SCHEME = "dns://"

#: ``socket.getaddrinfo``'s shape; tests inject their own.
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


def split_url(url: str) -> tuple[str, str]:
    """``HOST:PORT`` (or ``[v6]:PORT``) -> (host, port); one clear line when malformed."""
    host, sep, port = url.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidInputError(f"invalid Triton url {url!r}: use HOST:PORT or dns://NAME:PORT")
    return host.strip("[]"), port


def has_dns(urls: Sequence[str]) -> bool:
    """True when some entry is a ``dns://`` name (the fleet may change between passes)."""
    return any(u.startswith(DNS_SCHEME) for u in urls)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_name(host: str, port: str, *, resolver: Resolver | None = None) -> list[str]:
    """Every address of ``host`` as ``addr:port`` (``[v6]:port``), in resolver order, once."""
    if _is_literal(host):
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    lookup = resolver or socket.getaddrinfo
    try:
        infos = lookup(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FleetResolutionError(f"cannot resolve Triton fleet name {host}: {exc}") from exc
    found: list[str] = []
    for info in infos:
        address = str(info[4][0])
        entry = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        if entry not in found:
            found.append(entry)
    if not found:
        raise FleetResolutionError(f"Triton fleet name {host} resolved to no address")
    return found


def resolve_urls(urls: Sequence[str], *, resolver: Resolver | None = None) -> list[str]:
    """The fleet now: ``dns://`` entries expanded to their addresses, others as given."""
    resolved: list[str] = []
    for url in urls:
        if url.startswith(DNS_SCHEME):
            host, port = split_url(url.removeprefix(DNS_SCHEME))
            entries = resolve_name(host, port, resolver=resolver)
        else:
            split_url(url)
            entries = [url]
        resolved.extend(e for e in entries if e not in resolved)
    return resolved
