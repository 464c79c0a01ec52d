"""Where a model repository lives, behind one small interface.

Keys are '/'-separated paths relative to the repository root. Everything written becomes
visible atomically: single files through a staged write and a rename, version folders
through a staged copy and a rename of the whole folder.
"""

from __future__ import annotations

from repo_manager.storage.base import Storage
from repo_manager.storage.local import LocalStorage


def open_storage(location: str, *, s3_endpoint: str | None = None) -> Storage:
    """The storage for a ``--repository`` value: a folder, or ``s3://bucket/prefix``.

    ``s3_endpoint`` (else ``AWS_ENDPOINT_URL``) names an S3-compatible server; boto3 is
    imported only here, on demand, so a Router on a local folder never needs it.
    """
    if location.startswith("s3://"):
        try:
            from repo_manager.storage.s3 import S3Storage
        except ImportError as exc:
            from repo_manager.errors import InvalidInputError

            raise InvalidInputError(
                "S3 repositories need the s3 extra: pip install 'repo-manager[s3]'"
            ) from exc
        return S3Storage(location, endpoint_url=s3_endpoint)
    return LocalStorage(location)


__all__ = ["LocalStorage", "Storage", "open_storage"]
