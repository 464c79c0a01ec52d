"""Where a model repository lives, behind one small interface.

Keys are '/'-separated paths relative to the repository root. Everything written becomes
visible atomically: single files through a staged write and a rename, version folders
through a staged copy and a rename of the whole folder.
"""

from __future__ import annotations

from repo_manager.storage.base import Storage
from repo_manager.storage.local import LocalStorage


def open_storage(location: str) -> Storage:
    """The storage for a ``--repository`` value (a folder; ``s3://`` needs the s3 extra)."""
    if location.startswith("s3://"):
        from repo_manager.errors import InvalidInputError

        raise InvalidInputError(f"S3 repositories are not supported yet: {location}")
    return LocalStorage(location)


__all__ = ["LocalStorage", "Storage", "open_storage"]
