"""Prometheus metrics: the Routers' (client side), the manager's, and their names.

Importing this package registers nothing (see ``metrics.router`` and ``metrics.manager``).
"""

from __future__ import annotations

from repo_manager.metrics.manager import ManagerMetrics
from repo_manager.metrics.router import (
    LATENCY_BUCKETS,
    RouterMetrics,
    ShadowMetrics,
    VersionMetrics,
)
from repo_manager.metrics.server import start_metrics_server

__all__ = [
    "LATENCY_BUCKETS",
    "ManagerMetrics",
    "RouterMetrics",
    "ShadowMetrics",
    "VersionMetrics",
    "start_metrics_server",
]
