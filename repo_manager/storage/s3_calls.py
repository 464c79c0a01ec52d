"""The boto3 client of an S3 repository, and the one path every call to it takes.

Every request to S3 (plain calls, paginated listings, managed uploads and copies, the
lock's conditional writes, building the client itself) runs through ``S3Calls._run``, the
only place where botocore's and boto3's errors are caught. They leave it as one-line
``StorageError``s chained with ``from``, naming the bucket and the endpoint, never a
credential (credentials come from boto3's usual chain: the standard AWS variables,
profiles, instance roles). The S3 modules never call the client directly, so no new
call can forget the translation.

A request that cannot reach the endpoint (refused, reset, closed: a restarting S3 server)
is sent again for up to ``reconnect_timeout`` seconds before it fails; every request we
send is safe to repeat (conditional writes say so themselves: see ``s3_lock``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from repo_manager.errors import (
    BucketNotFoundError,
    InvalidInputError,
    RepoManagerError,
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
)

__all__ = [
    "CONDITION_FAILED",
    "MB",
    "MISSING",
    "S3Calls",
    "S3Location",
    "S3Settings",
    "parse_s3_url",
]

MB = 1024 * 1024
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "ExpiredToken",
        "InvalidToken",
        "403",
    }
)
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})  # the codes of a key that is not there
#: The codes of a conditional write (If-None-Match, If-Match) whose condition did not hold.
CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_SETUP = "client"  # the operation name under which building the client is translated
#: S3's rules for bucket names (general purpose buckets; MinIO applies the same).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
#: Errors of a request that never reached a live server (or lost it midway): sent again.
_RECONNECTABLE = (BotoConnectionError, ConnectionClosedError, ResponseStreamingError)

T = TypeVar("T")


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
    if not _BUCKET.match(bucket) or ".." in bucket or _IP_ADDRESS.match(bucket):
        raise InvalidInputError(
            f"invalid S3 bucket name {bucket!r} in {url}: 3 to 63 lowercase letters, digits, "
            "'.' or '-', starting and ending with a letter or digit"
        )
    return S3Location(bucket=bucket, prefix=prefix.strip("/"))


@dataclass(kw_only=True, frozen=True)
class S3Settings:
    """How the client talks to S3; checked here so bad values fail before any request."""

    endpoint_url: str | None = None
    multipart_threshold: int = 8 * MB
    multipart_chunksize: int = 8 * MB
    connect_timeout: float = 5.0
    lock_timeout: float = 60.0
    lock_lease: float = 20.0
    reconnect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidInputError(
                    f"invalid S3 endpoint {self.endpoint_url!r}: use http(s)://HOST:PORT"
                )
        for name in ("multipart_threshold", "multipart_chunksize"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"S3 {name} must be at least 1 byte")
        for name in ("connect_timeout", "lock_timeout", "lock_lease", "reconnect_timeout"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"S3 {name} must be positive")

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, **values: Any) -> S3Settings:
        """Settings with the endpoint given, else ``AWS_ENDPOINT_URL``, else AWS's own."""
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        return cls(endpoint_url=endpoint, **values)


class S3Calls:
    """The client of one bucket; each method is one S3 request, errors translated."""

    def __init__(self, where: S3Location, settings: S3Settings) -> None:
        self.where, self.settings = where, settings
        self.transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            max_concurrency=4,
        )
        config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=60,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        self.client: Any = self._run(
            "set up the S3 client for",
            _SETUP,
            lambda: boto3.session.Session().client(
                "s3", endpoint_url=settings.endpoint_url, config=config
            ),
        )

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint_url or "the default AWS endpoint"

    # -- the requests ---------------------------------------------------------------------

    def call(
        self, what: str, operation: str, *, none_on: frozenset[str] = frozenset(), **params: Any
    ) -> Any:
        """``client.<operation>(Bucket=..., **params)``; None when S3 answers a code of
        ``none_on`` (an expected refusal: a missing key, a lock someone else holds)."""
        return self._run(
            what,
            operation,
            lambda: getattr(self.client, operation)(Bucket=self.where.bucket, **params),
            none_on,
        )

    def read(self, what: str, key: str) -> bytes | None:
        """An object's bytes (None: missing); a broken body stream is translated too."""
        return self._run(
            what,
            "get_object",
            lambda: bytes(self.client.get_object(Bucket=self.where.bucket, Key=key)["Body"].read()),
            MISSING,
        )

    def sha256(self, what: str, key: str) -> str | None:
        """The sha256 of an object's content, streamed (None: missing)."""

        def digest() -> str:
            body = self.client.get_object(Bucket=self.where.bucket, Key=key)["Body"]
            hashed = hashlib.sha256()
            for block in body.iter_chunks(chunk_size=1 << 20):
                hashed.update(block)
            return hashed.hexdigest()

        found: str | None = self._run(what, "get_object", digest, MISSING)
        return found

    def pages(self, what: str, operation: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of a paginated listing; pages are fetched inside the translation."""
        return self._run(
            what,
            operation,
            lambda: list(
                self.client.get_paginator(operation).paginate(Bucket=self.where.bucket, **params)
            ),
        )

    def upload(
        self, what: str, path: Path, key: str, callback: Callable[[int], None] | None
    ) -> None:
        """A managed (multipart above the threshold) upload of a local file."""
        self._run(
            what,
            "upload_file",
            lambda: self.client.upload_file(
                str(path), self.where.bucket, key, Config=self.transfer, Callback=callback
            ),
        )

    def copy(self, what: str, source: str, target: str) -> None:
        """A managed server-side copy (multipart above the threshold) within the bucket."""
        self._run(
            what,
            "copy",
            lambda: self.client.copy(
                {"Bucket": self.where.bucket, "Key": source},
                self.where.bucket,
                target,
                Config=self.transfer,
            ),
        )

    # -- the one translation --------------------------------------------------------------

    @overload
    def _run(self, what: str, operation: str, request: Callable[[], T]) -> T: ...

    @overload
    def _run(
        self, what: str, operation: str, request: Callable[[], T], none_on: frozenset[str]
    ) -> T | None: ...

    def _run(
        self,
        what: str,
        operation: str,
        request: Callable[[], T],
        none_on: frozenset[str] = frozenset(),
    ) -> T | None:
        give_up: float | None = None
        pause = 0.2
        while True:
            try:
                return request()
            except (BotoCoreError, ClientError, Boto3Error) as exc:
                if _code(exc) in none_on:
                    return None
                if operation != _SETUP and _reconnectable(exc):
                    now = time.monotonic()
                    if give_up is None:
                        give_up = now + self.settings.reconnect_timeout
                    if now < give_up:
                        time.sleep(min(pause, give_up - now))
                        pause = min(2 * pause, 2.0)
                        continue
                raise self.translate(exc, what, operation) from exc

    def translate(self, exc: Exception, what: str, operation: str) -> RepoManagerError:
        """botocore's (or boto3's) error -> the project's, in one line without a secret."""
        if isinstance(exc, Boto3Error):
            # boto3's transfer errors (S3UploadFailedError) wrap the botocore error.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (BotoCoreError, ClientError)):
                return self.translate(cause, what, operation)
        where = f"{self.where} at {self.endpoint}"
        if operation == _SETUP:
            return StorageError(f"cannot set up S3 client for {self.where}: {exc}")
        if isinstance(exc, EndpointConnectionError) or (
            isinstance(exc, BotoCoreError) and "connect" in type(exc).__name__.lower()
        ):
            return StorageUnavailableError(
                f"cannot reach the S3 endpoint {self.endpoint} to {what} {self.where} "
                f"(tried for {self.settings.reconnect_timeout:.0f}s)"
            )
        if isinstance(exc, NoCredentialsError):
            return StorageAccessError(
                f"no S3 credentials to {what} {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket" or (code == "404" and operation == "head_bucket"):
                return BucketNotFoundError(
                    f"bucket {self.where.bucket} does not exist at {self.endpoint}"
                )
            if code in _ACCESS_CODES:
                return StorageAccessError(
                    f"S3 refused the credentials to {what} {where} ({code}): "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
                )
            return StorageError(f"S3 failed to {what} {where}: {code or exc}")
        return StorageError(f"S3 failed to {what} {where}: {type(exc).__name__}")


def _reconnectable(exc: Exception) -> bool:
    """Whether the request failed for want of a live server (boto3 wraps transfer errors)."""
    if isinstance(exc, Boto3Error):
        cause = exc.__cause__ or exc.__context__
        return cause is not None and _reconnectable(cause)
    return isinstance(exc, _RECONNECTABLE)


def _code(exc: Exception) -> str:
    """The S3 error code of a ClientError ('' for any other error)."""
    if not isinstance(exc, ClientError):
        return ""
    return str(exc.response.get("Error", {}).get("Code", ""))
