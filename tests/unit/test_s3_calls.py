"""Every S3 request leaves as a project error, through the one path in ``s3_calls``.

No server: botocore's own event hooks answer each request before it is sent (its real
parsing, retries and error classes still run), or the request goes to a closed port.
"""

from __future__ import annotations

import ast
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import Boto3Error
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

import repo_manager.storage as storage_package
from repo_manager import errors
from repo_manager.server import free_port
from repo_manager.storage.s3 import S3Storage
from repo_manager.storage.s3_calls import MISSING, S3Calls, S3Location, S3Settings, parse_s3_url

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


@pytest.mark.parametrize(
    "bucket", ["Models", "my_models", "a", "ab", "-models", "models-", "a..b", "1.2.3.4", "x" * 64]
)
def test_a_bucket_name_s3_would_refuse_is_bad_input(bucket: str) -> None:
    with pytest.raises(errors.InvalidInputError, match="invalid S3 bucket name"):
        parse_s3_url(f"s3://{bucket}/repo")


@pytest.mark.parametrize("bucket", ["abc", "models", "my-models.v2", "0" * 63])
def test_a_valid_bucket_name_is_taken(bucket: str) -> None:
    assert parse_s3_url(f"s3://{bucket}/a/b/").bucket == bucket


def test_a_missing_key_is_none_only_where_asked() -> None:
    calls = make_calls()
    answer(calls.client, "HeadObject", 404)
    assert calls.call("look up x in", "head_object", none_on=MISSING, Key="repo/x") is None
    error = translated(lambda: calls.call("look up x in", "head_object", Key="repo/x"))
    assert type(error) is errors.StorageError


def test_unreachable_endpoint_is_unavailable() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    calls = make_calls(endpoint, reconnect_timeout=0.5)
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
        {"reconnect_timeout": 0},
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
    "prepare": lambda s, _: s.prepare(),
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


def answer_if_match(status: int, code: str, seen: threading.Event | None = None) -> Any:
    """A before-send hook answering only the requests that carry If-Match."""

    def send(request: AWSPreparedRequest, **_: object) -> AWSResponse | None:
        if "If-Match" not in request.headers:
            return None
        if seen is not None:
            seen.set()
        body = f"<Error><Code>{code}</Code></Error>".encode()
        return AWSResponse(request.url, status, {}, _Raw(body))

    return send


def test_breaking_a_dead_lock_translates_a_refused_takeover() -> None:
    # Someone holds the lock (412) and never renews it (same ETag): after the lease it is
    # taken over with a PUT If-Match that ETag, and that PUT is refused.
    storage = make_storage(lock_lease=0.1, lock_timeout=5)
    answer(storage.client, "PutObject", 412, "PreconditionFailed")
    storage.client.meta.events.register_first(
        "before-send.s3.PutObject", answer_if_match(403, "AccessDenied")
    )
    answer(storage.client, "HeadObject", 200, headers={"ETag": '"dead"'})
    error = translated(lambda: _lock(storage, Path()))
    assert isinstance(error, errors.StorageAccessError) and "break lock m.lock" in str(error)


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [(403, "AccessDenied", "renewal failed"), (412, "PreconditionFailed", "took it over")],
)
def test_a_failed_renewal_stops_the_holder_at_its_next_write(
    caplog: pytest.LogCaptureFixture, status: int, code: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="repo_manager.storage.s3_lock")
    storage = make_storage(lock_lease=0.2)
    answer(storage.client, "PutObject", 200, headers={"ETag": '"first"'})
    answer(storage.client, "HeadObject", 200, headers={"ETag": '"someone-else"'})
    renewed = threading.Event()
    storage.client.meta.events.register_first(
        "before-send.s3.PutObject", answer_if_match(status, code, renewed)
    )
    deletes: list[bytes] = []

    def delete(request: AWSPreparedRequest, **_: object) -> AWSResponse:
        deletes.append(request.headers.get("If-Match", b""))
        return AWSResponse(request.url, 204, {}, _Raw(b""))

    storage.client.meta.events.register("before-send.s3.DeleteObject", delete)
    with storage.lock("m.lock"):
        assert renewed.wait(5)
        time.sleep(0.1)  # the renewer records the failure
        with pytest.raises(errors.StorageError, match=rf"lost lock m\.lock .*{reason}"):
            storage.write_bytes_atomic("state.json", b"{}")
    assert any("lost lock" in r.getMessage() for r in caplog.records)
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    assert deletes == [b'"first"']  # released only if still ours: DELETE If-Match our ETag


def test_a_renewal_that_hangs_past_the_trusted_part_of_the_lease_stops_the_holder() -> None:
    storage = make_storage(lock_lease=0.4)
    answer(storage.client, "PutObject", 200, headers={"ETag": '"first"'})
    answer(storage.client, "DeleteObject", 204)
    hanging = threading.Event()

    def hang(request: AWSPreparedRequest, **_: object) -> AWSResponse | None:
        if "If-Match" in request.headers:
            hanging.set()
            time.sleep(1.0)  # an endpoint that accepts the renewal and does not answer
        return None

    storage.client.meta.events.register_first("before-send.s3.PutObject", hang)
    with storage.lock("m.lock"):
        assert hanging.wait(5)
        time.sleep(0.4)  # past 3/4 of the lease since the last confirmed write
        with pytest.raises(errors.StorageError, match="no renewal confirmed"):
            storage.write_bytes_atomic("state.json", b"{}")


def test_a_request_is_sent_again_while_the_endpoint_restarts() -> None:
    calls = make_calls(reconnect_timeout=10)
    sent: list[float] = []

    def down_then_up(request: AWSPreparedRequest, **_: object) -> AWSResponse:
        sent.append(time.monotonic())
        if len(sent) < 6:  # botocore's own retry takes two of them each time
            raise EndpointConnectionError(endpoint_url=request.url)
        return AWSResponse(request.url, 200, {}, _Raw(b""))

    calls.client.meta.events.register("before-send.s3.HeadBucket", down_then_up)
    calls.call("open the bucket", "head_bucket")
    assert len(sent) == 6 and sent[-1] - sent[0] < 5


def test_an_endpoint_down_for_good_fails_after_the_reconnect_window() -> None:
    calls = make_calls(f"http://127.0.0.1:{free_port()}", reconnect_timeout=1)
    started = time.monotonic()
    error = translated(lambda: calls.call("open the bucket", "head_bucket"))
    assert isinstance(error, errors.StorageUnavailableError) and "tried for 1s" in str(error)
    assert 1 <= time.monotonic() - started < 5


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
