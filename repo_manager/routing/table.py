"""Follows the routing table the manager writes, and holds the plan built from it.

Without a watch endpoint, a daemon thread polls the table's cheap change token every
``poll_interval`` and re-reads the table only when it changed, so a weight change made by
another process reaches every live Router within ``poll_interval`` (on S3: one HEAD per
Router every 0.2 s). With one (``watch_url``: the long-running manager's metrics port),
the manager pushes each new table and the Router reads storage only while the endpoint is
unreachable, every ``fallback_interval`` (jittered), so a fleet costs S3 nothing while the
manager is up and still follows changes while it is down. Tables arrive from both paths;
only a newer generation replaces the one in force. Inference never waits on either.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from repo_manager.errors import StorageError
from repo_manager.metrics.router import RouterMetrics, TableSource
from repo_manager.routing.plan import RoutePlan
from repo_manager.routing.subscriber import WatchSubscriber
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
        watch_url: str | None = None,
        fallback_interval: float = 30.0,
        watch_retry: float = 10.0,
        on_poll: Callable[[], None] | None = None,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_poll`` runs every ``poll_interval`` in the polling thread (the Router
        follows a ``dns://`` fleet there); ``start`` begins following. ``watch_retry``:
        most seconds between two attempts to reach an unreachable watch endpoint. ``clock``:
        what a cohort rule's hour window reads (``RoutePlan.clock``)."""
        self.model = model
        self.metrics = metrics
        self.clock = clock
        self.plan = RoutePlan.build(model, None, clock=clock)
        self._storage = storage
        self._key = state_key(model)
        self._poll_interval = poll_interval
        self._fallback_interval = fallback_interval
        self._on_poll = on_poll
        self._token: object = object()  # never equal to a real token: first check reads
        self._reload_lock = threading.Lock()
        self._install_lock = threading.Lock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self.poller = threading.Thread(
            target=self._poll_loop, name=f"repo-manager-router-{model}", daemon=True
        )
        #: True while the manager's watch pushes the tables (storage is not polled then).
        self.watching = False
        self._next_storage_check = time.monotonic() + self._jittered(fallback_interval)
        self.subscriber = (
            None
            if watch_url is None
            else WatchSubscriber(
                watch_url,
                model,
                on_table=self.offer,
                on_state=self._watch_state,
                generation=self._generation,
                retry_max=watch_retry,
            )
        )
        self._source: TableSource | None = None
        if metrics is not None:
            self._source = metrics.table_source(model)
            self._source.moved(None, "storage")

    def start(self) -> None:
        self.poller.start()
        if self.subscriber is not None:
            self.subscriber.start()

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
            self.offer(table)
            return self.plan.table

    def offer(self, table: RoutingTable) -> bool:
        """Put ``table`` in force if it is newer than the one in force (a push and a poll
        may bring tables out of order: never go back to an older one)."""
        with self._install_lock:
            if not table.newer_than(self.plan.table):
                return False
            self.plan = RoutePlan.build(self.model, table, self.metrics, clock=self.clock)
        logger.info(
            "model %s routing generation %d: %s", self.model, table.generation, table.weights
        )
        with self._changed:
            self._changed.notify_all()
        return True

    def _generation(self) -> int:
        table = self.plan.table
        return -1 if table is None else table.generation

    def _jittered(self, interval: float) -> float:
        """``interval`` to 25% more: spreads a fleet's reads and never checks more often
        than asked (30 s on S3: at most 120 requests per Router-hour)."""
        return interval * random.uniform(1.0, 1.25)

    def _watch_state(self, connected: bool, reason: str) -> None:
        """The subscriber opened its stream, or lost it (said once per outage). The metric
        and the log come first, ``watching`` last: whoever sees it flip sees them too."""
        was = self.watching
        url = self.subscriber.url if self.subscriber else ""
        if self._source is not None and was != connected:
            old, new = ("storage", "watch") if connected else ("watch", "storage")
            self._source.moved(old, new, fell_back=not connected)
        elif self._source is not None and not connected:
            self._source.moved(None, None, fell_back=True)  # the first attempt failed
        if connected:
            logger.info(
                "model %s: following the routing table through the watch %s", self.model, url
            )
        else:
            # The table was current a moment ago: spread the fleet's first storage reads
            # over one interval rather than sending them all at once.
            self._next_storage_check = time.monotonic() + random.uniform(0, self._fallback_interval)
            logger.warning(
                "model %s: watch %s unreachable (%s); polling storage every ~%g s until it returns",
                self.model,
                url,
                reason,
                self._fallback_interval,
            )
        self.watching = connected

    def _storage_due(self) -> bool:
        """Whether this poll reads storage: always without a watch endpoint; never while
        the watch pushes; every ``fallback_interval`` (jittered) while it cannot."""
        if self.subscriber is None:
            return True
        if self.watching:
            return False
        now = time.monotonic()
        if now < self._next_storage_check:
            return False
        self._next_storage_check = now + self._jittered(self._fallback_interval)
        return True

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_interval):
            if self._storage_due():
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
        """Stop following; waits for a poll in progress unless called from the poller."""
        self._stop.set()
        if self.subscriber is not None:
            self.subscriber.close()
        if self.poller.is_alive() and self.poller is not threading.current_thread():
            self.poller.join(timeout=5)
        source, self._source = self._source, None
        if source is not None:
            source.moved("watch" if self.watching else "storage", None)
