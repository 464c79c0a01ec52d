"""S3Storage against a real S3-compatible server (moto): visibility, checksums, locks."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from repo_manager.errors import StorageAccessError, StorageError
from repo_manager.repository import ModelRepository
from repo_manager.storage.s3 import S3Storage, _local_etag
from tests.integration.conftest import MotoServer
from tests.unit.test_s3_calls import refuse

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


def test_breaking_a_dead_lock_translates_a_refused_delete(
    storage: S3Storage, moto: MotoServer
) -> None:
    # The delete that breaks a dead manager's lock is an S3 call like any other: refused,
    # it is one StorageAccessError line naming the lock, never a botocore ClientError.
    plant_dead_lock(storage, moto)
    refuse(storage.client, "DeleteObject")
    with (
        pytest.raises(StorageAccessError, match=r"break lock m\.lock") as caught,
        storage.lock("m.lock"),
    ):
        pass
    assert isinstance(caught.value.__cause__, ClientError)


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
