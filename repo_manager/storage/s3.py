"""A model repository in S3 (or any S3-compatible server), read directly by Triton.

The only module that imports boto3. botocore's errors are translated here, where they
enter, into one-line ``StorageError``s chained with ``from``; messages name the bucket and
the endpoint, never a credential (credentials come from boto3's usual chain: the standard
AWS variables, profiles, instance roles).

S3 has no rename, so a version is made visible whole in three steps:

1. every file is uploaded under ``<model>/.staging-<version>/`` (multipart above
   ``multipart_threshold``), a name Triton never takes for a version (not an integer) and
   ``versions()`` never lists;
2. each staged object's ETag is checked against the local file's MD5 (multipart: the MD5
   of the part MD5s), so a truncated or corrupted upload is caught before commit;
3. the objects are copied server-side to ``<model>/<version>/`` with ``manifest.json``
   copied last, then (new model only) ``config.pbtxt``; the staging prefix is deleted.

A version *exists* only once its manifest exists (``exists`` of a version folder key asks
for the manifest), and the manager only ever asks Triton to load versions it names, so a
publish killed at any point leaves nothing that looks like a version; the next publish of
that version removes the leftovers and starts again.

Locks are objects created with a conditional write (``If-None-Match: *``): exactly one
manager wins; the loser polls until the holder deletes it. The holder renews the object
(``If-Match`` its ETag) every quarter lease, so a lock whose ETag stays the same for a
whole lease (``lock_lease``, 20 s) belongs to a dead manager and is broken.
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
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from repo_manager.errors import (
    BucketNotFoundError,
    InvalidInputError,
    RepoManagerError,
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
)

__all__ = ["S3Location", "S3Storage", "parse_s3_url"]

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
MANIFEST = "manifest.json"
CONFIG = "config.pbtxt"
_MB = 1024 * 1024
_ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "ExpiredToken",
    "InvalidToken",
    "403",
}

Progress = Callable[[str], None]


@dataclass(kw_only=True, frozen=True)
class S3Location:
    """``s3://bucket/prefix`` split into its parts (prefix without slashes at its ends)."""

    bucket: str
    prefix: str

    def key(self, relative: str) -> str:
        relative = relative.strip("/")
        if not self.prefix:
            return relative
        return f"{self.prefix}/{relative}" if relative else self.prefix

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]`` -> S3Location (exit 2 on anything else)."""
    if not url.startswith("s3://"):
        raise InvalidInputError(f"not an s3:// repository: {url}")
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket or "://" in rest:
        raise InvalidInputError(
            f"invalid S3 repository {url!r}: use s3://bucket/prefix "
            "(give the endpoint with --s3-endpoint or AWS_ENDPOINT_URL)"
        )
    return S3Location(bucket=bucket, prefix=prefix.strip("/"))


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
                    f"  uploading {self.name}: {self.sent / _MB:.1f}/{self.size / _MB:.1f} MB"
                )


class _Lease(threading.Thread):
    """Renews a held lock object so waiters can tell a live holder from a dead one."""

    def __init__(self, storage: S3Storage, key: str, etag: str, *, every: float) -> None:
        super().__init__(name="repo-manager-s3-lock", daemon=True)
        self.storage, self.key, self.etag, self.every = storage, key, etag, every
        self.stopped = threading.Event()

    def run(self) -> None:
        client, bucket = self.storage.client, self.storage.where.bucket
        while not self.stopped.wait(self.every):
            try:
                response = client.put_object(
                    Bucket=bucket, Key=self.key, Body=uuid.uuid4().hex.encode(), IfMatch=self.etag
                )
                self.etag = str(response["ETag"])
            except (BotoCoreError, ClientError) as exc:
                logger.warning("could not renew lock %s: %s", self.key, type(exc).__name__)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


class S3Storage:
    """A repository under ``s3://bucket/prefix``; see the module docstring for the protocol."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        multipart_threshold: int = 8 * _MB,
        multipart_chunksize: int = 8 * _MB,
        connect_timeout: float = 5.0,
        lock_timeout: float = 60.0,
        lock_lease: float = 20.0,
    ) -> None:
        self.where = parse_s3_url(url)
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidInputError(
                    f"invalid S3 endpoint {self.endpoint_url!r}: use http(s)://HOST:PORT"
                )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )
        self.lock_timeout = lock_timeout
        self.lock_lease = lock_lease
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=60,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        try:
            self.client: Any = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, config=config
            )
        except BotoCoreError as exc:
            raise StorageError(f"cannot set up S3 client for {self.where}: {exc}") from exc

    # -- names ---------------------------------------------------------------------------

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

    def _endpoint(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    # -- error translation ------------------------------------------------------------------

    def _translate(self, exc: Exception, what: str) -> RepoManagerError:
        where = f"{self.where} at {self._endpoint()}"
        if isinstance(exc, EndpointConnectionError) or (
            isinstance(exc, BotoCoreError) and "connect" in type(exc).__name__.lower()
        ):
            return StorageUnavailableError(
                f"cannot reach the S3 endpoint {self._endpoint()} to {what}"
            )
        if isinstance(exc, NoCredentialsError):
            return StorageAccessError(
                f"no S3 credentials to {what} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchBucket",) or (code == "404" and what == "open the bucket"):
                return BucketNotFoundError(
                    f"bucket {self.where.bucket} does not exist at {self._endpoint()}"
                )
            if code in _ACCESS_CODES:
                return StorageAccessError(
                    f"S3 refused the credentials to {what} {where} ({code}): "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
                )
            return StorageError(f"S3 failed to {what} {where}: {code or exc}")
        return StorageError(f"S3 failed to {what} {where}: {type(exc).__name__}")

    def _call(self, what: str, call: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        """``call()`` with botocore's errors translated; None for a missing key if allowed."""
        try:
            return call()
        except ClientError as exc:
            if missing_ok and self._missing(exc):
                return None
            raise self._translate(exc, what) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, what) from exc

    @staticmethod
    def _missing(exc: ClientError) -> bool:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound")

    def check(self) -> None:
        """Fail early, in one line, on a missing bucket, bad credentials or no endpoint."""
        self._call("open the bucket", lambda: self.client.head_bucket(Bucket=self.where.bucket))

    # -- Storage interface ----------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        # The body is read inside the call: a broken stream is translated like the GET.
        data: bytes | None = self._call(
            f"read {key} in",
            lambda: bytes(
                self.client.get_object(Bucket=self.where.bucket, Key=self.where.key(key))[
                    "Body"
                ].read()
            ),
            missing_ok=True,
        )
        return data

    def write_bytes_atomic(self, key: str, data: bytes) -> None:
        # A PUT replaces an object whole: readers see the old or the new content.
        self._call(
            f"write {key} in",
            lambda: self.client.put_object(
                Bucket=self.where.bucket, Key=self.where.key(key), Body=data
            ),
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        head: dict[str, Any] | None = self._call(
            f"look up {key} in",
            lambda: self.client.head_object(Bucket=self.where.bucket, Key=self.where.key(key)),
            missing_ok=True,
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
            return self._head(f"{key}/{MANIFEST}") is not None
        if self._head(key) is not None:
            return True
        if key and "/" not in key:
            # A model exists once its config (copied last for a new model) does.
            return self._head(f"{key}/{CONFIG}") is not None
        return bool(self._list(key, limit=1))

    def _list(self, key: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        prefix = self.where.key(key)
        prefix = f"{prefix}/" if prefix else ""
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.where.bucket, Prefix=prefix):
                found.extend(page.get("Contents", []))
                if limit is not None and len(found) >= limit:
                    break
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"list {key or 'the root'} of") from exc
        return found

    def list_dir(self, key: str) -> list[str]:
        prefix = self.where.key(key)
        prefix = f"{prefix}/" if prefix else ""
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(Bucket=self.where.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.add(common["Prefix"][len(prefix) :].rstrip("/"))
                for item in page.get("Contents", []):
                    names.add(item["Key"][len(prefix) :])
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"list {key or 'the root'} of") from exc
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
            key=lambda p: (p.name in (MANIFEST, CONFIG), p.name == CONFIG, str(p)),
        )
        if not files:
            raise StorageError(f"nothing to publish in {source}")
        if self.exists(key):
            raise StorageError(f"{self.where}/{key} already exists")
        model, _, version = key.partition("/")
        staging = f"{model}/{STAGING_PREFIX}{version or 'model'}"
        # Leftovers of an interrupted publish: never a version (no manifest), removed now.
        # (``key`` does not exist, so whatever is under it is an unfinished commit.)
        self._abort_multipart(staging)
        self.remove_tree(staging)
        self.remove_tree(key)
        total = sum(p.stat().st_size for p in files)
        say(f"uploading {len(files)} files ({total / _MB:.1f} MB) to {self.where}/{staging}")
        for number, path in enumerate(files, 1):
            relative = path.relative_to(source).as_posix()
            self._upload(path, f"{staging}/{relative}", say)
            self._verify(path, f"{staging}/{relative}")
            say(f"uploaded {relative} ({number}/{len(files)})")
        say("checksums verified; committing")
        for path in files:  # manifest, then config, last (sorted so above)
            relative = path.relative_to(source).as_posix()
            self._copy(f"{staging}/{relative}", f"{key}/{relative}")
        self.remove_tree(staging)
        say(f"published {self.where}/{key}")

    def _abort_multipart(self, key: str) -> None:
        """Abort multipart uploads a killed publish left open (invisible, but billed)."""
        prefix = self.where.key(key) + "/"
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.where.bucket, Prefix=prefix)
            for upload in listing.get("Uploads", []):
                self.client.abort_multipart_upload(
                    Bucket=self.where.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"clean up {key} in") from exc

    def _upload(self, path: Path, key: str, say: Progress) -> None:
        size = path.stat().st_size
        callback = _ByteProgress(path.name, size, say) if size >= _MB else None
        try:
            self.client.upload_file(
                str(path),
                self.where.bucket,
                self.where.key(key),
                Config=self.transfer,
                Callback=callback,
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"upload {path.name} to") from exc
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (BotoCoreError, ClientError)):
                raise self._translate(cause, f"upload {path.name} to") from exc
            raise

    def _copy(self, source: str, target: str) -> None:
        try:
            self.client.copy(
                {"Bucket": self.where.bucket, "Key": self.where.key(source)},
                self.where.bucket,
                self.where.key(target),
                Config=self.transfer,
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"commit {target} to") from exc

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

    def _delete_prefix(self, key: str) -> None:
        keys = [item["Key"] for item in self._list(key)]
        # Manifest and config first: the folder stops being a version before it shrinks.
        keys.sort(key=lambda k: (not k.endswith((f"/{MANIFEST}", f"/{CONFIG}")), k))
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
            try:
                self.client.delete_objects(Bucket=self.where.bucket, Delete=batch)
            except (BotoCoreError, ClientError) as exc:
                raise self._translate(exc, f"remove {key} from") from exc

    def remove_tree(self, key: str) -> None:
        self._delete_prefix(key.strip("/"))

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        # A root-level *file*: Triton never lists it as a model.
        relative = f".repo-manager-lock.{name}"
        key = self.where.key(relative)
        etag = self._acquire(relative, name)
        lease = _Lease(self, key, etag, every=self.lock_lease / 4)
        lease.start()
        try:
            yield
        finally:
            lease.stop()
            try:
                self.client.delete_object(Bucket=self.where.bucket, Key=key)
            except (BotoCoreError, ClientError) as exc:
                raise self._translate(exc, f"release lock {name} in") from exc

    def _acquire(self, relative: str, name: str) -> str:
        """Create the lock object if absent; break it when its holder stopped renewing it.

        Staleness is judged by this process's own clock (the same ETag seen for longer
        than the lease), so clock skew between hosts cannot break a live lock.
        """
        key = self.where.key(relative)
        deadline = time.monotonic() + self.lock_timeout
        seen: tuple[str, float] | None = None
        while True:
            body = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
            try:
                response = self.client.put_object(
                    Bucket=self.where.bucket, Key=key, Body=body, IfNoneMatch="*"
                )
                return str(response["ETag"])
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise self._translate(exc, f"take lock {name} in") from exc
            except BotoCoreError as exc:
                raise self._translate(exc, f"take lock {name} in") from exc
            head = self._head(relative)
            now = time.monotonic()
            if head is not None:
                etag = str(head.get("ETag"))
                if seen is None or seen[0] != etag:
                    seen = (etag, now)
                elif now - seen[1] > self.lock_lease:
                    # The holder died (a renewed lock changes its ETag every lease/4).
                    self.client.delete_object(Bucket=self.where.bucket, Key=key)
                    seen = None
                    continue
            if now >= deadline:
                raise StorageError(
                    f"lock {name} in {self.where} is held by another manager; "
                    f"waited {self.lock_timeout:.0f}s"
                )
            time.sleep(0.2)

    def walk_files(self) -> Iterator[str]:
        prefix = self.where.key("")
        cut = len(prefix) + 1 if prefix else 0
        for item in self._list(""):
            yield item["Key"][cut:]
