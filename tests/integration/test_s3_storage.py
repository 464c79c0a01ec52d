"""S3Storage against a real S3-compatible server (moto): visibility, checksums, locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest
from botocore.exceptions import ClientError

from repo_manager.errors import StorageAccessError, StorageError
from repo_manager.history import archive_key, read_history
from repo_manager.repository import ModelRepository
from repo_manager.rollout.ledger import Ledger
from repo_manager.state import load_state
from repo_manager.storage.s3 import S3Storage, _local_etag
from tests.eventually import eventually
from tests.integration.conftest import MotoServer
from tests.unit.test_history import record_moves
from tests.unit.test_s3_calls import answer_if_match

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
MB = 1024 * 1024


@pytest.fixture
def storage(moto: MotoServer, bucket: str) -> S3Storage:
    return S3Storage(
        f"s3://{bucket}/repo",
        endpoint_url=moto.endpoint,
        multipart_threshold=5 * MB,
        multipart_chunksize=5 * MB,
        lock_timeout=10,
        lock_lease=1.0,
    )


def model_folder(root: Path, version: str, *, big: int = 0) -> Path:
    """A versions model folder (``m.versions``: what the manager publishes versions into)."""
    folder = root / "m.versions"
    (folder / version).mkdir(parents=True)
    (folder / "config.pbtxt").write_text('name: "m.versions"\n')
    (folder / version / "model.bin").write_bytes(os.urandom(big or 1000))
    (folder / version / "manifest.json").write_text("{}")
    return folder


def test_multipart_version_is_verified_and_lists_once_committed(
    storage: S3Storage, tmp_path: Path
) -> None:
    lines: list[str] = []
    storage.publish_dir(model_folder(tmp_path, "1", big=12 * MB), "m.versions", lines.append)
    storage.write_bytes_atomic("m/config.pbtxt", b'name: "m"\nplatform: "ensemble"\n')
    head = storage.client.head_object(
        Bucket=storage.where.bucket, Key="repo/m.versions/1/model.bin"
    )
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MB parts, checked against ours
    assert any("uploading model.bin" in line for line in lines)
    assert "checksums verified; committing" in lines
    repository = ModelRepository(storage)
    assert repository.models() == ["m"] and repository.versions("m") == ["1"]
    assert not [k for k in storage.walk_files() if ".staging-" in k]


def test_version_without_manifest_is_invisible_and_replaced_by_the_next_publish(
    storage: S3Storage, tmp_path: Path
) -> None:
    storage.publish_dir(model_folder(tmp_path / "a", "1"), "m.versions")
    # What a publish killed during its commit leaves: files of 2 but no manifest yet.
    storage.write_bytes_atomic("m.versions/2/model.bin", b"half")
    storage.write_bytes_atomic("m.versions/.staging-2/model.bin", b"half")
    repository = ModelRepository(storage)
    assert repository.versions("m") == ["1"] and not repository.has_version("m", "2")

    version_2 = model_folder(tmp_path / "b", "2") / "2"
    storage.publish_dir(version_2, "m.versions/2")
    assert repository.versions("m") == ["1", "2"]
    assert storage.read_bytes("m.versions/2/model.bin") == (version_2 / "model.bin").read_bytes()
    assert storage.read_bytes("m.versions/.staging-2/model.bin") is None


def test_publishing_an_existing_version_is_refused(storage: S3Storage, tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "1")
    storage.publish_dir(folder, "m")
    with pytest.raises(StorageError, match="already exists"):
        storage.publish_dir(folder / "1", "m/1")


def test_change_token_moves_with_every_write(storage: S3Storage) -> None:
    assert storage.change_token("state.json") is None
    storage.write_bytes_atomic("state.json", b"1")
    first = storage.change_token("state.json")
    storage.write_bytes_atomic("state.json", b"2")
    assert storage.change_token("state.json") != first


def test_the_bounded_history_archives_its_oldest_entries_on_s3(storage: S3Storage) -> None:
    ledger = Ledger(storage, history_limit=2)
    record_moves(ledger, [20, 30, 40])
    everything = ["publish stable", "publish canary at 10%"] + [
        f"set-weight {w}%" for w in (20, 30, 40)
    ]
    state = load_state(storage, "m")
    assert state is not None and state.archived == 3
    assert [t.action for t in state.history] == everything[-2:]
    archive = storage.read_bytes(archive_key("m"))
    assert archive is not None and len(archive.splitlines()) == 3
    assert [t.action for t in read_history(storage, "m")] == everything


def test_lock_admits_one_manager_at_a_time(storage: S3Storage) -> None:
    inside = 0
    overlaps: list[int] = []

    def work() -> None:
        nonlocal inside
        with storage.lock("m.lock"):
            inside += 1
            overlaps.append(inside)
            time.sleep(0.3)
            inside -= 1

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1]


def plant_dead_lock(storage: S3Storage, moto: MotoServer) -> None:
    """A lock object nobody renews: its holder was killed."""
    client = boto3.client("s3", endpoint_url=moto.endpoint)
    client.put_object(
        Bucket=storage.where.bucket, Key="repo/.repo-manager-lock.m.lock", Body=b"dead"
    )


def test_lock_of_a_dead_manager_is_broken_after_its_lease(
    storage: S3Storage, moto: MotoServer
) -> None:
    plant_dead_lock(storage, moto)
    started = time.monotonic()
    with storage.lock("m.lock"):
        waited = time.monotonic() - started
    assert 1.0 <= waited < 5.0


HOLD_LOCK = """
import sys, time
from repo_manager.storage.s3 import S3Storage
storage = S3Storage(sys.argv[1], endpoint_url=sys.argv[2], lock_lease=30.0)
with storage.lock("m.lock"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_of_a_killed_manager_on_this_host_is_taken_without_waiting_its_lease(
    storage: S3Storage, moto: MotoServer
) -> None:
    # A SIGKILLed manager (the soak's manager_kill) made the next command wait a whole
    # lease (20 s by default) before it could reconcile.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(storage.where), moto.endpoint],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    waiter = S3Storage(str(storage.where), endpoint_url=moto.endpoint, lock_lease=30.0)
    started = time.monotonic()
    with waiter.lock("m.lock"):
        waited = time.monotonic() - started
    assert waited < 2.0  # a lease is 30 s, and the holder renewed it just now


def test_a_live_holder_on_this_host_keeps_its_lock(storage: S3Storage, moto: MotoServer) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(storage.where), moto.endpoint],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        quick = S3Storage(str(storage.where), endpoint_url=moto.endpoint, lock_timeout=2.0)
        with pytest.raises(StorageError, match="held by another manager"), quick.lock("m.lock"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_breaking_a_dead_lock_translates_a_refused_takeover(
    storage: S3Storage, moto: MotoServer
) -> None:
    # The conditional PUT that takes a dead manager's lock over is an S3 call like any
    # other: refused, it is one StorageAccessError line naming the lock, never a ClientError.
    plant_dead_lock(storage, moto)
    storage.client.meta.events.register_first(
        "before-send.s3.PutObject", answer_if_match(403, "AccessDenied")
    )
    with (
        pytest.raises(StorageAccessError, match=r"break lock m\.lock") as caught,
        storage.lock("m.lock"),
    ):
        pass
    assert isinstance(caught.value.__cause__, ClientError)


def hold_first_break_until(storage: S3Storage, judged: threading.Barrier, go: Any) -> None:
    """Make ``storage``'s first break of a stale lock wait: for every waiter to have judged
    it stale (``judged``), then for ``go()``. A break is the request that removes or
    replaces a lock this waiter does not hold: a DELETE, or a PUT If-Match."""
    first = threading.Event()

    def hold(request: AWSPreparedRequest, **_: object) -> None:
        if request.method == "PUT" and "If-Match" not in request.headers:
            return
        if not first.is_set():
            first.set()
            judged.wait(timeout=30)
            go()

    for operation in ("PutObject", "DeleteObject"):
        storage.client.meta.events.register_first(f"before-send.s3.{operation}", hold)


def test_two_waiters_breaking_one_stale_lock_at_once_admit_exactly_one(
    storage: S3Storage, moto: MotoServer
) -> None:
    plant_dead_lock(storage, moto)
    waiters = [
        S3Storage(storage.location, endpoint_url=storage.endpoint_url, lock_lease=1.0)
        for _ in range(2)
    ]
    judged = threading.Barrier(len(waiters))
    order = threading.Lock()
    first_inside = threading.Event()
    breakers: list[int] = []

    def go(index: int) -> Any:
        def wait_turn() -> None:
            # The first to break goes at once; the other sends its break only once the
            # first holds the lock: the order that let the second remove the first's lock.
            with order:
                breakers.append(index)
                second = len(breakers) > 1
            if second:
                first_inside.wait(timeout=30)
                time.sleep(0.2)

        return wait_turn

    for index, waiter in enumerate(waiters):
        hold_first_break_until(waiter, judged, go(index))
    inside: list[int] = []
    overlaps: list[int] = []
    mutex = threading.Lock()

    def work(waiter: S3Storage) -> None:
        with waiter.lock("m.lock"):
            with mutex:
                inside.append(1)
                overlaps.append(len(inside))
            first_inside.set()
            time.sleep(1.5)
            waiter.write_bytes_atomic("state.json", b"{}")  # still its lock: no error
            with mutex:
                inside.pop()

    threads = [threading.Thread(target=work, args=(w,)) for w in waiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(breakers) == [0, 1]  # both judged the same lock stale
    assert overlaps == [1, 1]  # and one after the other held it


def test_a_holder_whose_lock_was_taken_over_stops_before_writing(
    storage: S3Storage, moto: MotoServer, tmp_path: Path
) -> None:
    client = boto3.client("s3", endpoint_url=moto.endpoint)
    key = "repo/.repo-manager-lock.m.lock"
    with storage.lock("m.lock"):
        # Another manager judged this lock stale (this one stalled) and took it over.
        client.put_object(Bucket=storage.where.bucket, Key=key, Body=b"the other manager")
        # A renewal (every lease/4) finds the lock is not ours any more. Waited for, not
        # slept: at load 9 in the suite no renewal had run 1.4 s later, and the write was
        # refused for the age of the last renewal instead (right, but not this reason).
        (lease,) = storage._leases()
        assert eventually(lambda: "took it over" in (lease.lost() or ""), timeout=15, every=0.05)
        with pytest.raises(StorageError, match=r"lost lock m\.lock .*took it over"):
            storage.write_bytes_atomic("state.json", b"{}")
        with pytest.raises(StorageError, match="lost lock"):
            storage.publish_dir(model_folder(tmp_path, "1"), "m.versions")
    assert storage.read_bytes("state.json") is None
    assert not storage.exists("m.versions")
    # The release left the other manager's lock alone.
    body = client.get_object(Bucket=storage.where.bucket, Key=key)["Body"].read()
    assert body == b"the other manager"


def test_live_lock_is_renewed_and_not_broken(storage: S3Storage) -> None:
    other = S3Storage(
        storage.location, endpoint_url=storage.endpoint_url, lock_timeout=3, lock_lease=1.0
    )
    with (
        storage.lock("m.lock"),
        pytest.raises(StorageError, match="held by another manager"),
        other.lock("m.lock"),
    ):
        pass


def test_local_etag_matches_what_s3_computes(storage: S3Storage, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(11 * MB))
    storage.client.upload_file(
        str(path), storage.where.bucket, "repo/f.bin", Config=storage.transfer
    )
    head = storage.client.head_object(Bucket=storage.where.bucket, Key="repo/f.bin")
    assert head["ETag"].strip('"') == _local_etag(path, threshold=5 * MB, chunk=5 * MB)
