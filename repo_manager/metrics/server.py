"""Serving a registry over HTTP for Prometheus to scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from repo_manager.errors import InvalidInputError

__all__ = ["start_metrics_server"]


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", *, registry: CollectorRegistry = REGISTRY
) -> Any:
    """Serve ``registry`` at ``http://addr:port/metrics`` (the default registry holds the
    Routers' metrics; a manager command passes the registry of its ``ManagerMetrics``).

    Returns prometheus-client's server object; call its ``shutdown()`` to stop it. A port
    that is taken (or an address this host lacks) is one clear InvalidInputError.
    """
    try:
        started = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc} "
            "(pick another --metrics-port)"
        ) from exc
    # prometheus-client >= 0.16 returns (server, thread); older ones return None.
    return started[0] if isinstance(started, tuple) else started
