"""A lock between managers of one S3 repository: a lease kept alive by its holder.

The lock is one object, and every write of it is conditional, so that of managers racing
for it exactly one wins each time:

- take: PUT ``If-None-Match: *`` (there is no lock);
- renew: PUT ``If-Match`` the holder's ETag, every quarter lease (``lock_lease``, 20 s);
- break: a waiter that saw the same ETag for a whole lease (by its own clock, so clock skew
  between hosts cannot break a live lock) takes the lock over with PUT ``If-Match`` that
  stale ETag. Of two waiters that judged it stale at once, the second one's PUT finds the
  first one's new ETag and fails, and it goes on waiting (a delete and a create instead
  would remove the first one's new lock);
- a holder on this host that provably ended (same PID namespace, PID gone or reused: a
  SIGKILLed manager) is broken the same way at once, without waiting out its lease;
- release: DELETE ``If-Match`` the holder's ETag, so a lock taken over stays.

Every body carries a fresh token, so every write changes the ETag (S3's ETag of a plain PUT
is the body's MD5). A request sent again after a reset connection, whose first copy did
land, fails its own condition; the lock then holds our body, and that write counts as won.

The holder trusts its lock only while it can show it: a renewal that fails, or no renewal
confirmed for 3/4 of a lease (a waiter breaks it after a whole one), marks the lock lost.
``Lease.check``, which the storage calls before every write under the lock, then raises, so
the holder stops rather than write under a lock another manager may hold by now.
Every request goes through ``S3Calls``, like any other S3 call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from repo_manager.errors import RepoManagerError, StorageError
from repo_manager.processes import ProcessId
from repo_manager.storage.s3_calls import CONDITION_FAILED, MISSING, S3Calls

__all__ = ["LOCK_PREFIX", "Lease", "hold_lock"]

logger = logging.getLogger(__name__)

LOCK_PREFIX = ".repo-manager-lock."  # a root-level *file*: Triton never lists it as a model
_CHANGED = CONDITION_FAILED | MISSING  # the lock is another's now, or gone
_POLL = 0.2  # seconds between two attempts of a waiter
_TRUST = 0.75  # of a lease: how long the holder trusts an unconfirmed lock


@contextmanager
def hold_lock(calls: S3Calls, name: str) -> Iterator[Lease]:
    """Hold the lock ``name`` of the repository for the ``with`` block, renewing its lease."""
    key = calls.where.key(f"{LOCK_PREFIX}{name}")
    lease = _acquire(calls, key, name)
    try:
        yield lease
    finally:
        lease.release()


@dataclass(kw_only=True, frozen=True)
class _Write:
    """One conditional write of the lock object."""

    etag: str | None  # the lock's ETag after our write; None: the condition failed
    sent: float  # monotonic time the request left
    current: str | None = None  # when it failed: the lock's ETag now (None: no lock)
    holder: dict[str, str] = field(default_factory=dict)  # when it failed: who holds it


def _write(calls: S3Calls, verb: str, name: str, key: str, **condition: str) -> _Write:
    """PUT a fresh lock body under ``condition`` (IfNoneMatch or IfMatch)."""
    me = ProcessId.current()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    if me is not None:
        holder.update(namespace=me.namespace, start=me.start)
    body = json.dumps(holder).encode()
    metadata = {entry: str(value) for entry, value in holder.items()}  # HEAD shows it
    sent = time.monotonic()
    response = calls.call(
        f"{verb} lock {name} in",
        "put_object",
        none_on=_CHANGED,
        Key=key,
        Body=body,
        Metadata=metadata,
        **condition,
    )
    if response is not None:
        return _Write(etag=str(response["ETag"]), sent=sent)
    head = calls.call(f"look up lock {name} in", "head_object", none_on=MISSING, Key=key)
    current = None if head is None else str(head.get("ETag"))
    mine = hashlib.md5(body, usedforsecurity=False).hexdigest()
    if current is not None and current.strip('"') == mine:
        return _Write(etag=current, sent=sent)  # our own first copy landed
    held_by = {} if head is None else dict(head.get("Metadata") or {})
    return _Write(etag=None, sent=sent, current=current, holder=held_by)


def _acquire(calls: S3Calls, key: str, name: str) -> Lease:
    """Take the lock if free; take it over when its holder stopped renewing it."""
    settings = calls.settings
    deadline = time.monotonic() + settings.lock_timeout
    seen: tuple[str, float] | None = None  # an ETag and when this waiter first saw it
    condition, verb = {"IfNoneMatch": "*"}, "take"
    while True:
        write = _write(calls, verb, name, key, **condition)
        if write.etag is not None:
            if verb == "break":
                logger.info("broke lock %s in %s: its holder stopped renewing", name, key)
            return Lease(calls=calls, key=key, name=name, etag=write.etag, confirmed=write.sent)
        condition, verb = {"IfNoneMatch": "*"}, "take"
        now = time.monotonic()
        if write.current is None:
            seen = None  # released between our write and our look
        elif seen is None or seen[0] != write.current:
            seen = (write.current, now)
            if _holder_died_here(write.holder):
                condition, verb = {"IfMatch": write.current}, "break"
                seen = None
                continue
        elif now - seen[1] > settings.lock_lease:
            # The holder died (a renewed lock changes its ETag every lease/4): take over
            # exactly that lock; a waiter that broke it first has changed its ETag.
            condition, verb = {"IfMatch": write.current}, "break"
            seen = None
            continue
        if now >= deadline:
            raise StorageError(
                f"lock {name} in {calls.where} is held by another manager; "
                f"waited {settings.lock_timeout:.0f}s"
            )
        time.sleep(_POLL)


def _holder_died_here(holder: dict[str, str]) -> bool:
    """Whether the lock's holder (its object metadata) was a process of this host that
    provably ended (a SIGKILLed manager): then there is no lease to wait out. Measured in
    bench/soak.py: a reconcile after a killed manager waited 22-30 s for the lease. Any
    doubt (another host, another PID namespace, no such metadata) leaves it to the lease."""
    try:
        owner = ProcessId(
            namespace=int(holder["namespace"]), pid=int(holder["pid"]), start=int(holder["start"])
        )
    except (ValueError, KeyError, TypeError):
        return False
    return holder.get("host") == socket.gethostname() and owner.is_dead_here()


class Lease:
    """A held lock: renewed in the background; lost once it cannot be shown to be ours."""

    def __init__(self, *, calls: S3Calls, key: str, name: str, etag: str, confirmed: float):
        self.calls, self.key, self.name = calls, key, name
        self._etag, self._confirmed = etag, confirmed
        self._lost: str | None = None
        self._mutex = threading.Lock()
        self._stopped = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_until_stopped, name="repo-manager-s3-lock", daemon=True
        )
        self._renewer.start()

    @property
    def _lease(self) -> float:
        return self.calls.settings.lock_lease

    def lost(self) -> str | None:
        """Why the lock can no longer be counted on (None: it is still ours)."""
        with self._mutex:
            if self._lost is not None:
                return self._lost
            age = time.monotonic() - self._confirmed
        if age > _TRUST * self._lease:
            return f"no renewal confirmed for {age:.1f}s"
        return None

    def check(self, what: str) -> None:
        """Raise before ``what`` (a write under the lock) when the lock is lost."""
        reason = self.lost()
        if reason is not None:
            raise StorageError(
                f"lost lock {self.name} in {self.calls.where} ({reason}); stopped before "
                f"{what}: another manager may hold it now, run the command again"
            )

    def _lose(self, reason: str) -> None:
        with self._mutex:
            self._lost = self._lost or reason
        # Info only: the holder's next write raises with the reason (the CLI's one line).
        logger.info("lost lock %s: %s", self.key, reason)

    def _renew_until_stopped(self) -> None:
        while not self._stopped.wait(self._lease / 4):
            with self._mutex:
                etag = self._etag
            try:
                write = _write(self.calls, "renew", self.name, self.key, IfMatch=etag)
            except RepoManagerError as exc:
                self._lose(f"renewal failed: {exc}")
                return
            if write.etag is None:
                self._lose("another manager took it over or removed it")
                return
            with self._mutex:
                self._etag, self._confirmed = write.etag, write.sent

    def release(self) -> None:
        """Stop renewing and delete the lock, unless another manager took it over."""
        self._stopped.set()
        self._renewer.join(timeout=self.calls.settings.reconnect_timeout + 10)
        with self._mutex:
            etag = self._etag
        deleted = self.calls.call(
            f"release lock {self.name} in",
            "delete_object",
            none_on=_CHANGED,
            Key=self.key,
            IfMatch=etag,
        )
        if deleted is None:
            logger.info("lock %s was taken over before its release; left to its holder", self.key)
