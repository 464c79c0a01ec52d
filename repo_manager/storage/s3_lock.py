"""A lock between managers of one S3 repository: a lease kept alive by its holder.

The lock is an object created with a conditional write (``If-None-Match: *``): exactly one
manager wins; the loser polls until the holder deletes it. The holder renews the object
(``If-Match`` its ETag) every quarter lease, so a lock whose ETag stays the same for a
whole lease (``lock_lease``, 20 s) belongs to a dead manager and is broken. Staleness is
judged by the waiter's own clock, so clock skew between hosts cannot break a live lock.
Every request goes through ``S3Calls``, like any other S3 call.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from repo_manager.errors import RepoManagerError, StorageError
from repo_manager.storage.s3_calls import MISSING, S3Calls

__all__ = ["LOCK_PREFIX", "hold_lock"]

logger = logging.getLogger(__name__)

LOCK_PREFIX = ".repo-manager-lock."  # a root-level *file*: Triton never lists it as a model
_TAKEN = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_POLL = 0.2  # seconds between two attempts of a waiter


@contextmanager
def hold_lock(calls: S3Calls, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of the repository for the ``with`` block, renewing its lease."""
    key = calls.where.key(f"{LOCK_PREFIX}{name}")
    etag = _acquire(calls, key, name)
    lease = _Lease(calls, key, etag, every=calls.settings.lock_lease / 4)
    lease.start()
    try:
        yield
    finally:
        lease.stop()
        calls.call(f"release lock {name} in", "delete_object", Key=key)


def _acquire(calls: S3Calls, key: str, name: str) -> str:
    """Create the lock object if absent; break it when its holder stopped renewing it."""
    settings = calls.settings
    deadline = time.monotonic() + settings.lock_timeout
    seen: tuple[str, float] | None = None
    while True:
        etag = _create(calls, key, name)
        if etag is not None:
            return etag
        head = calls.call(f"look up lock {name} in", "head_object", none_on=MISSING, Key=key)
        now = time.monotonic()
        if head is not None:
            current = str(head.get("ETag"))
            if seen is None or seen[0] != current:
                seen = (current, now)
            elif now - seen[1] > settings.lock_lease:
                # The holder died (a renewed lock changes its ETag every lease/4).
                calls.call(f"break lock {name} in", "delete_object", Key=key)
                seen = None
                continue
        if now >= deadline:
            raise StorageError(
                f"lock {name} in {calls.where} is held by another manager; "
                f"waited {settings.lock_timeout:.0f}s"
            )
        time.sleep(_POLL)


def _create(calls: S3Calls, key: str, name: str) -> str | None:
    """The new lock object's ETag, or None when another manager holds the lock."""
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
    response = calls.call(
        f"take lock {name} in", "put_object", none_on=_TAKEN, Key=key, Body=body, IfNoneMatch="*"
    )
    return None if response is None else str(response["ETag"])


class _Lease(threading.Thread):
    """Renews a held lock object so waiters can tell a live holder from a dead one."""

    def __init__(self, calls: S3Calls, key: str, etag: str, *, every: float) -> None:
        super().__init__(name="repo-manager-s3-lock", daemon=True)
        self.calls, self.key, self.etag, self.every = calls, key, etag, every
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                response = self.calls.call(
                    f"renew lock {self.key} in",
                    "put_object",
                    Key=self.key,
                    Body=uuid.uuid4().hex.encode(),
                    IfMatch=self.etag,
                )
                self.etag = str(response["ETag"])
            except RepoManagerError as exc:
                # A missed renewal is survivable (three more come before the lease ends).
                logger.warning("could not renew lock %s: %s", self.key, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
