"""The newest routing table of every model someone watches, kept by one poller per manager.

Any manager process may write a routing table (a one-shot ``set-weight``, a ``rollout``, a
``reconcile``), not only the long-running one that serves the watch. So the hub checks
each watched model's cheap change token every ``poll_interval`` (one HEAD per model on S3,
however many Routers subscribe), and the long-running manager also ``offer``s every table
it records itself, which then reaches subscribers at once. Storage stays the source of
truth: the hub only relays what it read or what was just written there.

Only models that exist are watched: a name is looked up in the list of the repository's
state documents, read again at most every ``relist_interval`` seconds when a name is not
in it. So clients naming models at will cost one listing per interval, not one storage
request (and one polled model, and one metric label) per name (measured before: 500 held
names on S3 took storage traffic from 5 to 160-210 requests/s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

from repo_manager.errors import StorageError
from repo_manager.state import RoutingTable, load_routing_table, state_key
from repo_manager.storage import Storage

__all__ = ["TableHub"]

logger = logging.getLogger(__name__)


class _Unread:
    """The token of a table never read: equal to no real token."""

    __hash__ = object.__hash__


class _Watched:
    """One watched model: how many subscribe, the last token seen, the newest table."""

    __slots__ = ("idle_since", "subscribers", "table", "token")

    def __init__(self) -> None:
        self.subscribers = 0
        #: When the last subscriber left (monotonic), None while someone subscribes.
        self.idle_since: float | None = None
        self.token: Hashable | None = _Unread()  # never equal to a real token
        self.table: RoutingTable | None = None


class TableHub:
    """Tables of the models with subscribers; ``on_change`` hears of every newer one."""

    def __init__(
        self,
        storage: Storage,
        *,
        poll_interval: float = 0.2,
        linger: float = 60.0,
        on_change: Callable[[RoutingTable], None] | None = None,
        relist_interval: float = 2.0,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.storage = storage
        self.poll_interval = poll_interval
        self.linger = linger
        self.on_change = on_change
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self._failing = False
        self.relist_interval = relist_interval
        self._models: frozenset[str] = frozenset()
        self._listed_at: float | None = None
        self._listing = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="watch-hub", daemon=True)

    def start(self) -> None:
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(timeout=5)

    # -- which models exist ---------------------------------------------------------------------

    def known(self, model: str) -> bool | None:
        """True when ``model`` has a routing table (watched, or in the last listing); False
        when a recent listing lacks it; None when the listing is due (``relist``)."""
        if model in self._watched or model in self._models:
            return True
        listed = self._listed_at
        if listed is not None and time.monotonic() - listed < self.relist_interval:
            return False
        return None

    def relist(self) -> None:
        """Read which models have a state document (one listing; a caller that waited on
        another's listing uses it). Blocking: call it off the event loop."""
        with self._listing:
            listed = self._listed_at
            if listed is not None and time.monotonic() - listed < self.relist_interval:
                return
            prefix, suffix = state_key("\0").split("\0")
            try:
                names = self.storage.list_dir("")
            finally:  # a failed listing too: storage is asked once per interval at most
                self._listed_at = time.monotonic()
            self._models = frozenset(
                n[len(prefix) : -len(suffix)]
                for n in names
                if n.startswith(prefix) and n.endswith(suffix) and len(n) > len(prefix + suffix)
            )

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(self, model: str) -> RoutingTable | None:
        """Count one more subscriber of ``model``; returns its newest table (the first
        subscriber of a model reads it from storage, so it may block briefly)."""
        with self._lock:
            watched = self._watched.setdefault(model, _Watched())
            watched.subscribers += 1
            watched.idle_since = None
            if isinstance(watched.token, _Unread):
                try:
                    self._check(model, watched)
                except StorageError as exc:  # the poller tries again; subscribers wait
                    logger.warning("watch: cannot read %s's routing table: %s", model, exc)
            return watched.table

    def unsubscribe(self, model: str) -> None:
        """One subscriber fewer; a model nobody watched for ``linger`` seconds is no
        longer polled (kept that long so that Routers reconnecting, or a long-poll between
        two requests, do not make the hub read the table again)."""
        with self._lock:
            watched = self._watched.get(model)
            if watched is not None:
                watched.subscribers = max(0, watched.subscribers - 1)
                if watched.subscribers == 0:
                    watched.idle_since = time.monotonic()

    def latest(self, model: str) -> RoutingTable | None:
        watched = self._watched.get(model)
        return None if watched is None else watched.table

    def subscribers(self) -> dict[str, int]:
        """Subscribers per watched model (for the manager's metrics and tests)."""
        with self._lock:
            return {m: w.subscribers for m, w in self._watched.items()}

    def _forget_idle(self) -> None:
        """Stop polling models nobody watched for ``linger`` seconds (caller holds the lock)."""
        now = time.monotonic()
        for model, watched in list(self._watched.items()):
            if watched.idle_since is not None and now - watched.idle_since >= self.linger:
                del self._watched[model]

    # -- news -----------------------------------------------------------------------------------

    def offer(self, table: RoutingTable) -> bool:
        """A table this process just recorded: kept and announced when it is newer than
        the one known (a poll may have read it first). False when nobody watches it."""
        with self._lock:
            watched = self._watched.get(table.model)
            if watched is None or not table.newer_than(watched.table):
                return False
            watched.table = table
        self._announce(table)
        return True

    def _announce(self, table: RoutingTable) -> None:
        if self.on_change is not None:
            try:
                self.on_change(table)
            except Exception:  # a broken listener must not stop the poller
                logger.exception("watch listener failed on %s", table.model)

    def _check(self, model: str, watched: _Watched) -> RoutingTable | None:
        """Read the model's table if its token moved (caller holds the lock); returns a
        table newer than the one known, else None. A read error keeps the known one."""
        key = state_key(model)
        token = self.storage.change_token(key)
        if token == watched.token or token is None:
            return None
        table = load_routing_table(self.storage, model)
        watched.token = token
        if table is None or not table.newer_than(watched.table):
            return None
        watched.table = table
        return table

    def poll(self) -> None:
        """Check every watched model once (the poller's step; tests call it directly)."""
        news: list[RoutingTable] = []
        with self._lock:
            self._forget_idle()
            for model, watched in list(self._watched.items()):
                try:
                    found = self._check(model, watched)
                except StorageError as exc:
                    if not self._failing:
                        logger.warning("watch: cannot read %s's routing table: %s", model, exc)
                    self._failing = True
                    continue
                if self._failing:
                    logger.info("watch: the routing tables are readable again")
                self._failing = False
                if found is not None:
                    news.append(found)
        for table in news:
            self._announce(table)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception as exc:  # the poller must outlive any storage hiccup
                logger.warning("watch: poll failed: %s", exc)
