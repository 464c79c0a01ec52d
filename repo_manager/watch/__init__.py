"""The manager's watch endpoint: Routers subscribe to routing tables instead of polling.

``hub`` keeps the newest table of every watched model (one change-token poller per manager,
plus what the manager records itself); ``server`` serves it, with the manager's metrics,
on the metrics port. The Router's side is ``repo_manager.routing.subscriber``.
"""

from __future__ import annotations

from repo_manager.watch.http import WatchLimits, raise_descriptor_limit
from repo_manager.watch.hub import TableHub
from repo_manager.watch.server import WatchServer, table_event

__all__ = ["TableHub", "WatchLimits", "WatchServer", "raise_descriptor_limit", "table_event"]
