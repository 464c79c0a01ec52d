"""Follows the routing table the manager writes, and holds the plan built from it.

A daemon thread polls the table's cheap change token and re-reads the table only when it
changed, so a weight change made by another process reaches every live Router within
``poll_interval``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from repo_manager.errors import StorageError
from repo_manager.metrics.router import RouterMetrics
from repo_manager.routing.plan import RoutePlan
from repo_manager.state import RoutingTable, load_routing_table, state_key
from repo_manager.storage import Storage

__all__ = ["TableWatcher"]

logger = logging.getLogger(__name__)


class TableWatcher:
    """The routing table of one model in ``storage`` and the ``plan`` in force.

    ``plan`` is replaced by one assignment when the table changes and read without a lock.
    """

    def __init__(
        self,
        model: str,
        storage: Storage,
        *,
        poll_interval: float,
        on_poll: Callable[[], None] | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        """``on_poll`` runs after every poll in the same thread (the Router follows a
        ``dns://`` fleet there); ``start`` begins polling."""
        self.model = model
        self.metrics = metrics
        self.plan = RoutePlan.build(model, None)
        self._storage = storage
        self._key = state_key(model)
        self._poll_interval = poll_interval
        self._on_poll = on_poll
        self._token: object = object()  # never equal to a real token: first check reads
        self._reload_lock = threading.Lock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self.poller = threading.Thread(
            target=self._poll_loop, name=f"repo-manager-router-{model}", daemon=True
        )

    def start(self) -> None:
        self.poller.start()

    def refresh(self) -> RoutingTable | None:
        """Re-read the routing table now if its change token moved; returns the one in force.

        A missing or unreadable document keeps the last good table: a half-broken
        repository must not take traffic away from versions that are serving.
        """
        with self._reload_lock:
            token = self._storage.change_token(self._key)
            if token == self._token:
                return self.plan.table
            self._token = token
            where = f"{self._storage.location}/{self._key}"
            if token is None:
                logger.warning("routing table %s is missing; keeping the last good one", where)
                return self.plan.table
            try:
                table = load_routing_table(self._storage, self.model)
            except StorageError as exc:
                logger.warning("%s; keeping the last good routing table", exc)
                return self.plan.table
            if table is None:
                logger.warning("routing table %s vanished; keeping the last good one", where)
                return self.plan.table
            self._install(table)
            return table

    def _install(self, table: RoutingTable) -> None:
        self.plan = RoutePlan.build(self.model, table, self.metrics)
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
            if self._on_poll is not None:
                self._on_poll()

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until the table in force has at least ``generation``; False on timeout."""

        def reached() -> bool:
            table = self.plan.table
            return table is not None and table.generation >= generation

        with self._changed:
            return self._changed.wait_for(reached, timeout)

    def close(self) -> None:
        """Stop polling; waits for a poll in progress unless called from the poller."""
        self._stop.set()
        if self.poller.is_alive() and self.poller is not threading.current_thread():
            self.poller.join(timeout=5)
