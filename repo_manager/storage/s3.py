"""A model repository in S3 (or any S3-compatible server), read directly by Triton.

Requests, and the translation of their errors, live in ``s3_calls``; the lock between
managers in ``s3_lock``. This module is the ``Storage`` on top of them.

S3 has no rename, so a version is made visible whole in three steps:

1. every file is uploaded under ``<model>/.staging-<version>/`` (multipart above
   ``multipart_threshold``), a name Triton never takes for a version (not an integer) and
   ``versions()`` never lists;
2. each staged object's ETag is checked against the local file's MD5 (multipart: the MD5
   of the part MD5s), so a truncated or corrupted upload is caught before commit;
3. the objects are copied server-side to ``<model>/<version>/`` with ``manifest.json``
   copied last, then (new model only) ``config.pbtxt``; the staging prefix is deleted.

Triton calls a prefix a directory only when some object lies under it, and refuses to start
on a repository that is not one: ``prepare`` writes ``SERVABLE_MARKER`` at the root (once,
atomically: a PUT If-None-Match), so a fresh prefix is servable before the first publish.

Writes made under a lock (``lock``) first check that the lock is still this manager's
(``Lease.check``): a manager whose lock was lost stops instead of writing.

A version *exists* only once its manifest exists (``exists`` of a version folder key asks
for the manifest), and the manager only ever asks Triton to load versions it names, so a
publish killed at any point leaves nothing that looks like a version; the next publish of
that version removes the leftovers and starts again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo_manager.errors import StorageError
from repo_manager.names import CONFIG_FILE, MANIFEST_FILE
from repo_manager.storage.s3_calls import (
    CONDITION_FAILED,
    MB,
    MISSING,
    S3Calls,
    S3Location,
    S3Settings,
    parse_s3_url,
)
from repo_manager.storage.s3_lock import Lease, hold_lock

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

__all__ = ["SERVABLE_MARKER", "S3Location", "S3Storage", "parse_s3_url"]

STAGING_PREFIX = ".staging-"
#: The root object that makes the repository prefix a directory for Triton. A file, not a
#: folder: Triton never takes it for a model, and ``models()`` skips dot names.
SERVABLE_MARKER = ".repo-manager.keep"
_MARKER_BODY = b"repo-manager: keeps this prefix a directory for Triton; do not delete\n"

Progress = Callable[[str], None]


def _local_etag(path: Path, *, threshold: int, chunk: int) -> str:
    """The ETag S3 computes for ``path`` uploaded with this transfer configuration."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size < threshold:
            return hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()
        digests = []
        while block := handle.read(chunk):
            digests.append(hashlib.md5(block, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}"


class _ByteProgress:
    """boto3 transfer callback -> a progress line per ~10% of a file (thread-safe)."""

    def __init__(self, name: str, size: int, progress: Progress) -> None:
        self.name, self.size, self.progress = name, size, progress
        self.sent = 0
        self.shown = -1
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.sent += amount
            tenth = self.sent * 10 // max(self.size, 1)
            if tenth != self.shown:
                self.shown = tenth
                self.progress(
                    f"  uploading {self.name}: {self.sent / MB:.1f}/{self.size / MB:.1f} MB"
                )


class S3Storage:
    """A repository under ``s3://bucket/prefix``; see the module docstring for the protocol."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        multipart_threshold: int = 8 * MB,
        multipart_chunksize: int = 8 * MB,
        connect_timeout: float = 5.0,
        lock_timeout: float = 60.0,
        lock_lease: float = 20.0,
        reconnect_timeout: float = 10.0,
    ) -> None:
        self.where = parse_s3_url(url)
        settings = S3Settings.from_env(
            endpoint_url,
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            connect_timeout=connect_timeout,
            lock_timeout=lock_timeout,
            lock_lease=lock_lease,
            reconnect_timeout=reconnect_timeout,
        )
        self.calls = S3Calls(self.where, settings)
        self._held = threading.local()  # the leases this thread holds (``lock``)

    # -- names ---------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str | None:
        return self.calls.settings.endpoint_url

    @property
    def client(self) -> Any:
        """The boto3 client, for tests and tools; this module calls S3 through ``calls``."""
        return self.calls.client

    @property
    def transfer(self) -> TransferConfig:
        return self.calls.transfer

    @property
    def location(self) -> str:
        return str(self.where)

    @property
    def triton_location(self) -> str:
        """The repository as Triton's S3 support names it: ``s3://http://HOST:PORT/b/p``."""
        if self.endpoint_url is None:
            return self.location
        return f"s3://{self.endpoint_url.rstrip('/')}/{self.where.bucket}" + (
            f"/{self.where.prefix}" if self.where.prefix else ""
        )

    def check(self) -> None:
        """Fail early, in one line, on a missing bucket, bad credentials or no endpoint."""
        self.calls.call("open the bucket", "head_bucket")

    def prepare(self) -> None:
        """Make the prefix a directory for Triton (idempotent: an existing marker stays)."""
        self.check()
        self.calls.call(
            f"write {SERVABLE_MARKER} in",
            "put_object",
            none_on=CONDITION_FAILED,
            Key=self.where.key(SERVABLE_MARKER),
            Body=_MARKER_BODY,
            IfNoneMatch="*",
        )

    def _leases(self) -> list[Lease]:
        held: list[Lease] | None = getattr(self._held, "leases", None)
        if held is None:
            held = self._held.leases = []
        return held

    def _guard(self, what: str) -> None:
        """Before a write: stop if a lock this thread holds was lost."""
        for lease in self._leases():
            lease.check(what)

    # -- Storage interface ----------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        return self.calls.read(f"read {key} in", self.where.key(key))

    def write_bytes_atomic(self, key: str, data: bytes) -> None:
        # A PUT replaces an object whole: readers see the old or the new content.
        self._guard(f"writing {key}")
        self.calls.call(f"write {key} in", "put_object", Key=self.where.key(key), Body=data)

    def _head(self, key: str) -> dict[str, Any] | None:
        head: dict[str, Any] | None = self.calls.call(
            f"look up {key} in", "head_object", none_on=MISSING, Key=self.where.key(key)
        )
        return head

    def change_token(self, key: str) -> Hashable | None:
        head = self._head(key)
        if head is None:
            return None
        return (head.get("ETag"), str(head.get("LastModified")), head.get("ContentLength"))

    def _is_version_key(self, key: str) -> bool:
        parts = key.strip("/").split("/")
        return len(parts) == 2 and parts[1].isdigit()

    def exists(self, key: str) -> bool:
        key = key.strip("/")
        if self._is_version_key(key):
            # A version exists once its manifest (copied last) does.
            return self._head(f"{key}/{MANIFEST_FILE}") is not None
        if self._head(key) is not None:
            return True
        if key and "/" not in key:
            # A model exists once its config (copied last for a new model) does.
            return self._head(f"{key}/{CONFIG_FILE}") is not None
        listing = self.calls.call(
            f"list {key or 'the root'} of", "list_objects_v2", Prefix=self._prefix(key), MaxKeys=1
        )
        return bool(listing.get("Contents"))

    def _prefix(self, key: str) -> str:
        """The listing prefix of a folder key ('' lists the whole bucket)."""
        prefix = self.where.key(key)
        return f"{prefix}/" if prefix else ""

    def _pages(self, key: str, **params: Any) -> list[dict[str, Any]]:
        return self.calls.pages(
            f"list {key or 'the root'} of", "list_objects_v2", Prefix=self._prefix(key), **params
        )

    def _list(self, key: str) -> list[dict[str, Any]]:
        return [item for page in self._pages(key) for item in page.get("Contents", [])]

    def list_files(self, key: str) -> dict[str, Hashable]:
        """One listing: each object's ETag, size and LastModified. LastModified is in the
        token because an ETag is an MD5, and two contents with one MD5 can be made."""
        prefix = self._prefix(key)
        return {
            item["Key"][len(prefix) :]: (
                item.get("ETag"),
                item.get("Size"),
                str(item.get("LastModified")),
            )
            for item in self._list(key)
        }

    def sha256(self, key: str) -> str | None:
        return self.calls.sha256(f"read {key} in", self.where.key(key))

    def list_dir(self, key: str) -> list[str]:
        prefix = self._prefix(key)
        names: set[str] = set()
        for page in self._pages(key, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.add(common["Prefix"][len(prefix) :].rstrip("/"))
            for item in page.get("Contents", []):
                names.add(item["Key"][len(prefix) :])
        names = {n for n in names if n and not n.startswith(STAGING_PREFIX)}
        if key and "/" not in key.strip("/"):
            # In a model folder, a numeric folder without its manifest is an unfinished
            # publish, not a version.
            names = {n for n in names if not n.isdigit() or self.exists(f"{key}/{n}")}
        return sorted(names)

    def publish_dir(self, source: Path, key: str, progress: Progress | None = None) -> None:
        say = progress or (lambda _line: None)
        key = key.strip("/")
        files = sorted(
            (p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
            key=lambda p: (p.name in (MANIFEST_FILE, CONFIG_FILE), p.name == CONFIG_FILE, str(p)),
        )
        if not files:
            raise StorageError(f"nothing to publish in {source}")
        if self.exists(key):
            raise StorageError(f"{self.where}/{key} already exists")
        model, _, version = key.partition("/")
        staging = f"{model}/{STAGING_PREFIX}{version or 'model'}"
        # Leftovers of an interrupted publish: never a version (no manifest), removed now.
        # (``key`` does not exist, so whatever is under it is an unfinished commit.)
        self._guard(f"publishing {key}")
        self._abort_multipart(staging)
        self.remove_tree(staging)
        self.remove_tree(key)
        total = sum(p.stat().st_size for p in files)
        say(f"uploading {len(files)} files ({total / MB:.1f} MB) to {self.where}/{staging}")
        for number, path in enumerate(files, 1):
            relative = path.relative_to(source).as_posix()
            self._upload(path, f"{staging}/{relative}", say)
            self._verify(path, f"{staging}/{relative}")
            say(f"uploaded {relative} ({number}/{len(files)})")
        say("checksums verified; committing")
        for path in files:  # manifest, then config, last (sorted so above)
            relative = path.relative_to(source).as_posix()
            target = f"{key}/{relative}"
            self._guard(f"committing {target}")
            self.calls.copy(
                f"commit {target} to",
                self.where.key(f"{staging}/{relative}"),
                self.where.key(target),
            )
        self.remove_tree(staging)
        # A part upload whose connection died (an S3 restart mid-upload) was sent again and
        # landed, but boto3's abort of the first one may have failed too: none is left open.
        self._abort_multipart(staging)
        say(f"published {self.where}/{key}")

    def _abort_multipart(self, key: str) -> None:
        """Abort multipart uploads left open under ``key`` (invisible, but billed): by a
        killed publish, or by a part whose connection died. Only the lock holder uploads
        there, so every one found is an orphan."""
        what = f"clean up {key} in"
        pages = self.calls.pages(what, "list_multipart_uploads", Prefix=self.where.key(key) + "/")
        for upload in (u for page in pages for u in page.get("Uploads", [])):
            self.calls.call(
                what, "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
            )

    def _upload(self, path: Path, key: str, say: Progress) -> None:
        size = path.stat().st_size
        callback = _ByteProgress(path.name, size, say) if size >= MB else None
        self.calls.upload(f"upload {path.name} to", path, self.where.key(key), callback)

    def _verify(self, path: Path, key: str) -> None:
        head = self._head(key)
        expected = _local_etag(
            path,
            threshold=self.transfer.multipart_threshold,
            chunk=self.transfer.multipart_chunksize,
        )
        if head is None:
            raise StorageError(f"uploaded {key} vanished from {self.where}")
        etag = str(head.get("ETag", "")).strip('"')
        if head.get("ContentLength") != path.stat().st_size or etag != expected:
            raise StorageError(
                f"checksum mismatch for {self.where}/{key} after upload; publish again"
            )

    def remove_tree(self, key: str) -> None:
        key = key.strip("/")
        self._guard(f"removing {key or 'the root'}")
        keys = [item["Key"] for item in self._list(key)]
        # Manifest and config first: the folder stops being a version before it shrinks.
        keys.sort(key=lambda k: (not k.endswith((f"/{MANIFEST_FILE}", f"/{CONFIG_FILE}")), k))
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
            self.calls.call(f"remove {key} from", "delete_objects", Delete=batch)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with hold_lock(self.calls, name) as lease:
            held = self._leases()
            held.append(lease)
            try:
                yield
            finally:
                held.remove(lease)

    def walk_files(self) -> Iterator[str]:
        prefix = self.where.key("")
        cut = len(prefix) + 1 if prefix else 0
        for item in self._list(""):
            yield item["Key"][cut:]
