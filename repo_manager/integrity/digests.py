"""sha256 of repository files, computed once per change of a file.

A reconcile pass verifies every version it keeps loaded; hashing a 100 MB plan on every
pass would make the pass as slow as reading the plan. The cache keeps each file's digest
under the change token its folder listing gave (size, mtime, ctime and inode of a local
file; ETag, size and LastModified of an S3 object), so an unchanged file costs one stat
(or its share of one listing) and only a changed file is read again.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass

from repo_manager.storage import Storage

__all__ = ["DigestCache", "DigestCounts"]


@dataclass(kw_only=True)
class DigestCounts:
    """What the cache did (for tests and ``bench``): files hashed, and cache hits."""

    hashed: int = 0
    hits: int = 0


class DigestCache:
    """Digests of one storage's files, each valid while its change token stands."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.counts = DigestCounts()
        self._known: dict[str, tuple[Hashable, str]] = {}
        self._lock = threading.Lock()

    def digest(self, key: str, token: Hashable) -> str | None:
        """The sha256 of ``key`` whose listing gave ``token`` (None: it vanished).

        A file that changes while it is read is cached under the token seen before the
        read: its next listing shows another token, so it is read again then.
        """
        with self._lock:
            known = self._known.get(key)
            if known is not None and known[0] == token:
                self.counts.hits += 1
                return known[1]
        found = self.storage.sha256(key)
        with self._lock:
            self.counts.hashed += 1
            if found is None:
                self._known.pop(key, None)
            else:
                self._known[key] = (token, found)
        return found

    def forget(self, prefix: str) -> None:
        """Drop the digests under ``prefix`` (a version removed from the repository)."""
        with self._lock:
            for key in [k for k in self._known if k.startswith(prefix)]:
                del self._known[key]
