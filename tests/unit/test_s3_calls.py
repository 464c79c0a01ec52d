"""Every S3 request leaves as a project error, through the one path in ``s3_calls``.

No server: botocore's own event hooks answer each request before it is sent (its real
parsing, retries and error classes still run), or the request goes to a closed port.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import Boto3Error
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import BotoCoreError, ClientError

import repo_manager.storage as storage_package
from repo_manager import errors
from repo_manager.server import free_port
from repo_manager.storage.s3 import S3Storage
from repo_manager.storage.s3_calls import MISSING, S3Calls, S3Location, S3Settings

SECRET = "unit-secret-never-printed"
ENDPOINT = "http://127.0.0.1:9"  # never reached: the hooks answer first
STORAGE = Path(storage_package.__file__).parent


class _Raw:
    """The raw stream botocore reads a response body from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.body


def answer(
    client: Any,
    operation: str,
    status: int,
    code: str = "",
    headers: dict[str, str] | None = None,
) -> None:
    """Make the server's answer to ``operation`` ('' : to every request) this one."""
    body = f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode() if code else b""

    def send(request: AWSPreparedRequest, **_: object) -> AWSResponse:
        return AWSResponse(request.url, status, headers or {}, _Raw(body))

    event = f"before-send.s3.{operation}" if operation else "before-send.s3"
    client.meta.events.register(event, send)


def refuse(client: Any, operation: str = "", code: str = "AccessDenied") -> None:
    """S3 refuses ``operation`` ('' : every request) with a 403 ``code``."""
    answer(client, operation, 403, code)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "unit-key",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def make_calls(endpoint: str = ENDPOINT, **settings: Any) -> S3Calls:
    where = S3Location(bucket="models", prefix="repo")
    return S3Calls(where, S3Settings(endpoint_url=endpoint, connect_timeout=1, **settings))


def make_storage(**settings: Any) -> S3Storage:
    return S3Storage("s3://models/repo", endpoint_url=ENDPOINT, **settings)


def translated(call: Callable[[], object]) -> errors.RepoManagerError:
    """The project error ``call`` raised, checked to be one line, chained, without a secret."""
    with pytest.raises(errors.RepoManagerError) as caught:
        call()
    error = caught.value
    assert isinstance(error.__cause__, (BotoCoreError, ClientError, Boto3Error))
    assert "\n" not in str(error) and SECRET not in str(error)
    return error


# -- the translation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected", "phrase"),
    [
        (403, "AccessDenied", errors.StorageAccessError, "refused the credentials"),
        (403, "SignatureDoesNotMatch", errors.StorageAccessError, "(SignatureDoesNotMatch)"),
        (404, "NoSuchBucket", errors.BucketNotFoundError, "bucket models does not exist"),
        (500, "InternalError", errors.StorageError, "S3 failed to write x in s3://models/repo"),
    ],
)
def test_client_error_codes_become_project_errors(
    status: int, code: str, expected: type[errors.RepoManagerError], phrase: str
) -> None:
    calls = make_calls()
    answer(calls.client, "PutObject", status, code)
    error = translated(lambda: calls.call("write x in", "put_object", Key="repo/x", Body=b""))
    assert type(error) is expected and phrase in str(error)


def test_a_404_of_the_bucket_check_is_a_missing_bucket() -> None:
    storage = make_storage()
    answer(storage.client, "HeadBucket", 404)
    error = translated(storage.check)
    assert isinstance(error, errors.BucketNotFoundError) and isinstance(
        error, errors.InvalidInputError
    )


def test_a_missing_key_is_none_only_where_asked() -> None:
    calls = make_calls()
    answer(calls.client, "HeadObject", 404)
    assert calls.call("look up x in", "head_object", none_on=MISSING, Key="repo/x") is None
    error = translated(lambda: calls.call("look up x in", "head_object", Key="repo/x"))
    assert type(error) is errors.StorageError


def test_unreachable_endpoint_is_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    calls = make_calls(endpoint)
    error = translated(lambda: calls.call("open the bucket", "head_bucket"))
    assert isinstance(error, errors.StorageUnavailableError) and endpoint in str(error)


def test_no_credentials_is_an_access_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    calls = make_calls()
    error = translated(lambda: calls.call("open the bucket", "head_bucket"))
    assert isinstance(error, errors.StorageAccessError) and "no S3 credentials" in str(error)


def test_invalid_parameters_are_a_storage_error() -> None:
    calls = make_calls()
    error = translated(lambda: calls.call("look up the root of", "head_object", Key=""))
    assert type(error) is errors.StorageError and "ParamValidationError" in str(error)


def test_a_failed_managed_upload_is_translated_through_boto3s_wrapper(tmp_path: Path) -> None:
    calls = make_calls()
    refuse(calls.client, "PutObject")
    (tmp_path / "f").write_bytes(b"1")
    error = translated(lambda: calls.upload("upload f to", tmp_path / "f", "repo/f", None))
    assert isinstance(error, errors.StorageAccessError) and "upload f to" in str(error)


def test_an_unknown_profile_fails_while_setting_up_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    error = translated(make_calls)
    assert type(error) is errors.StorageError and "cannot set up S3 client" in str(error)


@pytest.mark.parametrize(
    "settings",
    [
        {"endpoint_url": "127.0.0.1:9000"},
        {"multipart_chunksize": 0},
        {"lock_lease": 0},
        {"connect_timeout": -1},
    ],
)
def test_settings_refuse_bad_values(settings: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidInputError):
        S3Settings(**settings)


# -- every storage operation takes the one path ------------------------------------------


def _publish(storage: S3Storage, tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "manifest.json").write_text("{}")
    storage.publish_dir(tmp_path / "1", "m/1")


def _lock(storage: S3Storage, _: Path) -> None:
    with storage.lock("m.lock"):
        pass


OPERATIONS: dict[str, Callable[[S3Storage, Path], object]] = {
    "check": lambda s, _: s.check(),
    "read_bytes": lambda s, _: s.read_bytes("m/config.pbtxt"),
    "write_bytes_atomic": lambda s, _: s.write_bytes_atomic("state.json", b"{}"),
    "change_token": lambda s, _: s.change_token("state.json"),
    "exists": lambda s, _: s.exists("m"),
    "list_dir": lambda s, _: s.list_dir(""),
    "publish_dir": _publish,
    "remove_tree": lambda s, _: s.remove_tree("m"),
    "lock": _lock,
    "walk_files": lambda s, _: list(s.walk_files()),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_storage_operation_translates_a_refusal(operation: str, tmp_path: Path) -> None:
    storage = make_storage()
    refuse(storage.client)
    error = translated(lambda: OPERATIONS[operation](storage, tmp_path))
    assert isinstance(error, errors.StorageAccessError) and "s3://models/repo" in str(error)


def test_breaking_a_dead_lock_translates_a_refused_delete() -> None:
    # Someone holds the lock (412) and never renews it (same ETag): it is broken after
    # the lease, and the delete that breaks it is refused.
    storage = make_storage(lock_lease=0.1, lock_timeout=5)
    answer(storage.client, "PutObject", 412, "PreconditionFailed")
    answer(storage.client, "HeadObject", 200, headers={"ETag": '"dead"'})
    refuse(storage.client, "DeleteObject")
    error = translated(lambda: _lock(storage, Path()))
    assert isinstance(error, errors.StorageAccessError) and "break lock m.lock" in str(error)


def test_a_refused_renewal_is_logged_and_the_lock_still_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = make_storage(lock_lease=0.2)
    answer(storage.client, "PutObject", 200, headers={"ETag": '"first"'})
    renewed = threading.Event()

    def refused_renewal(request: AWSPreparedRequest, **_: object) -> AWSResponse | None:
        if "If-Match" not in request.headers:
            return None
        renewed.set()
        return AWSResponse(request.url, 403, {}, _Raw(b"<Error><Code>AccessDenied</Code></Error>"))

    storage.client.meta.events.register_first("before-send.s3.PutObject", refused_renewal)
    answer(storage.client, "DeleteObject", 204)
    with storage.lock("m.lock"):
        assert renewed.wait(5)
    assert any("could not renew lock" in r.getMessage() for r in caplog.records)
    assert not any(SECRET in r.getMessage() for r in caplog.records)


# -- and no module can bypass it ---------------------------------------------------------


def _source(name: str) -> ast.Module:
    return ast.parse((STORAGE / name).read_text(), filename=name)


def test_only_s3_calls_catches_botocore_errors() -> None:
    handlers = {
        path.name: [
            ast.unparse(handler.type)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Try)
            for handler in node.handlers
            if handler.type is not None
        ]
        for path in sorted(STORAGE.glob("*.py"))
    }
    botocore = {
        name: found
        for name, found in handlers.items()
        if any(e in t for t in found for e in ("Boto", "ClientError", "Credentials"))
    }
    assert botocore == {"s3_calls.py": ["(BotoCoreError, ClientError, Boto3Error)"]}


@pytest.mark.parametrize("name", ["s3.py", "s3_lock.py"])
def test_storage_and_lock_never_call_the_client_directly(name: str) -> None:
    direct = [
        ast.unparse(node)
        for node in ast.walk(_source(name))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "client"
    ]
    imports = [
        ast.unparse(node)
        for node in ast.walk(_source(name))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("botocore")
    ]
    assert direct == [] and imports == []
