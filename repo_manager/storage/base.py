"""The storage interface every repository backend implements."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """A model repository's files: read, write atomically, publish folders whole."""

    @property
    def location(self) -> str:
        """The repository as users name it (a folder path or an s3:// URL)."""
        ...

    @property
    def triton_location(self) -> str:
        """The repository as Triton's ``--model-repository`` takes it."""
        ...

    def check(self) -> None:
        """Fail with one line when the repository cannot be used at all."""
        ...

    def prepare(self) -> None:
        """Make the repository servable before any Triton starts (idempotent).

        Triton refuses a repository path that is not a directory: a missing folder, or an
        S3 prefix no object lies under yet (a fleet started before the first publish).
        """
        ...

    def read_bytes(self, key: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        ...

    def write_bytes_atomic(self, key: str, data: bytes) -> None:
        """Write a file so that readers see the old or the new content, never a mix."""
        ...

    def change_token(self, key: str) -> Hashable | None:
        """A cheap value that changes whenever the file changes (None: missing)."""
        ...

    def exists(self, key: str) -> bool: ...

    def list_files(self, key: str) -> dict[str, Hashable]:
        """Every file under a folder key, by its path relative to that folder, with a change
        token that moves whenever the file's content may have (one listing, no content read)."""
        ...

    def sha256(self, key: str) -> str | None:
        """The sha256 (hex) of a file's content, read as a stream (None: missing)."""
        ...

    def list_dir(self, key: str) -> list[str]:
        """Names of the entries directly under a folder key ('' is the root)."""
        ...

    def publish_dir(
        self, source: Path, key: str, progress: Callable[[str], None] | None = None
    ) -> None:
        """Copy a local folder to ``key`` so that it appears whole or not at all."""
        ...

    def remove_tree(self, key: str) -> None:
        """Remove a folder and all it holds (no error when missing)."""
        ...

    def lock(self, name: str) -> AbstractContextManager[None]:
        """An exclusive lock between manager processes working on the same repository."""
        ...

    def walk_files(self) -> Iterator[str]:
        """Every file key in the repository (for checks and snapshots)."""
        ...
