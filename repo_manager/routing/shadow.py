"""Shadow traffic: a share of stable's requests sent again to the canary, in the background.

Judges a canary before any user sees it, even at weight 0: its answers are discarded
(or compared with stable's by a callback) and counted in the Router's ``RouterMetrics``. A bounded
queue and one worker thread keep a slow canary from ever slowing the users' requests:
what does not fit is dropped, and counted.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from tritonclient.utils import InferenceServerException

from repo_manager.errors import InvalidInputError, TritonUnavailableError
from repo_manager.metrics.router import RouterMetrics, ShadowMetrics
from repo_manager.routing.plan import RoutePlan
from repo_manager.routing.servers import Inputs, Outputs

__all__ = ["Compare", "ShadowMirror"]

logger = logging.getLogger(__name__)

#: Compares a mirrored (shadow) answer with the one the user got; records into metrics.
Compare = Callable[[Any, ShadowMetrics], None]
#: One attempt on a version (``ServerPool.send``).
Send = Callable[[str, Inputs, Outputs], Any]
_random = random.random


class ShadowMirror:
    """Mirrors ``share`` of the requests stable served to the canary of the same plan."""

    def __init__(self, model: str, send: Send, *, queue_size: int, metrics: RouterMetrics) -> None:
        self.model = model
        self.metrics = metrics
        #: Share (0..1) of stable's requests mirrored; 0 mirrors nothing.
        self.share = 0.0
        self._send = send
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._worker: threading.Thread | None = None

    def set_share(self, share: float) -> None:
        """Mirror ``share`` (0..1) from now on; the worker starts with the first share."""
        if not 0.0 <= share <= 1.0:
            raise InvalidInputError(f"shadow share must be between 0 and 1, got {share}")
        self.share = float(share)
        if share and self._worker is None:
            self._worker = threading.Thread(
                target=self._loop, name=f"repo-manager-shadow-{self.model}", daemon=True
            )
            self._worker.start()

    def maybe_mirror(
        self,
        plan: RoutePlan,
        served: str,
        inputs: Inputs,
        outputs: Outputs,
        compare: Compare | None,
    ) -> None:
        """Queue a mirror of a request ``served`` by stable, by chance ``share``; never waits."""
        table = plan.table
        if table is None or table.canary is None or served != table.stable:
            return
        if table.canary == served or _random() >= self.share:
            return
        try:
            self._queue.put_nowait((table.canary, inputs, outputs, compare))
        except queue.Full:
            self.metrics.shadow(self.model, table.canary).add(dropped=1)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            version, inputs, outputs, compare = item
            sm = self.metrics.shadow(self.model, version)
            started = time.perf_counter()
            try:
                result = self._send(version, inputs, outputs)
            except (InferenceServerException, TritonUnavailableError) as exc:
                logger.debug("shadow request to %s version %s failed: %s", self.model, version, exc)
                sm.add(error=1)
                continue
            sm.add(ok=1, latency_sum=time.perf_counter() - started, latency_count=1)
            if compare is not None:
                try:
                    compare(result, sm)
                except Exception as exc:  # a comparison must never kill the worker
                    logger.warning("shadow comparison for %s failed: %s", self.model, exc)

    def close(self) -> None:
        """Let the worker finish what is queued (up to 10 s), then stop it."""
        if self._worker is None:
            return
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            logger.debug("shadow queue full at close; worker left to exit with the process")
        else:
            self._worker.join(timeout=10)
