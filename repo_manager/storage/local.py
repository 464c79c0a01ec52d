"""A model repository in a local folder."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path

from repo_manager.errors import InvalidInputError, StorageError

_STAGING_PREFIX = ".staging-"
#: Bytes read at a time when hashing (a 100 MB plan is never held in memory whole).
_HASH_BLOCK = 1 << 20


def os_error_words(exc: OSError) -> str:
    """What went wrong, in the OS's words: ``strerror``, or for ``shutil.copytree``'s
    collected errors (whose ``strerror`` is None: "cannot publish ...: None" once hid a
    full disk) the first file's cause, e.g. "No space left on device"."""
    if exc.strerror:
        return str(exc.strerror)
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    for entry in errors:
        cause = entry[2] if isinstance(entry, tuple) and len(entry) == 3 else entry
        text = str(cause)
        found = re.match(r"\[Errno \d+\] ([^:]+)", text)
        return found.group(1) if found else text
    return str(exc) or type(exc).__name__


class LocalStorage:
    """A folder on this machine; staged writes live beside their target and are renamed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def triton_location(self) -> str:
        return str(self.root)

    def check(self) -> None:
        if not self.root.is_dir():
            raise InvalidInputError(f"repository {self.root} does not exist")

    def prepare(self) -> None:
        """Create the folder (and its parents) when missing: mkdir is atomic."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"repository {self.root} is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create repository {self.root}: {os_error_words(exc)}"
            ) from exc

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(key)}: {os_error_words(exc)}") from exc

    def write_bytes_atomic(self, key: str, data: bytes) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, staged = tempfile.mkstemp(prefix=_STAGING_PREFIX, dir=target.parent)
            try:
                os.fchmod(fd, 0o644)  # Routers of other users read the state file
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(staged, target)
            except BaseException:
                Path(staged).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {os_error_words(exc)}") from exc

    def change_token(self, key: str) -> Hashable | None:
        try:
            st = os.stat(self.path(key))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list_files(self, key: str) -> dict[str, Hashable]:
        """Files under ``key`` with a token of size, mtime, ctime and inode: a content change
        moves ctime even when mtime is set back (``touch -d``), and a replaced file has
        another inode."""
        folder = self.path(key)
        found: dict[str, Hashable] = {}
        try:
            for dirpath, dirs, names in os.walk(folder):
                # A linked folder is not walked (its files could change unseen): it is
                # listed as an entry of its own, which no manifest names.
                linked = [d for d in dirs if (Path(dirpath) / d).is_symlink()]
                for name in [*names, *linked]:
                    path = Path(dirpath) / name
                    st = path.stat()  # a linked file: its target's, which is what is read
                    token = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
                    found[path.relative_to(folder).as_posix()] = token
        except OSError as exc:
            raise StorageError(f"cannot list {folder}: {os_error_words(exc)}") from exc
        return found

    def sha256(self, key: str) -> str | None:
        digest = hashlib.sha256()
        try:
            with open(self.path(key), "rb") as handle:
                while block := handle.read(_HASH_BLOCK):
                    digest.update(block)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(key)}: {os_error_words(exc)}") from exc
        return digest.hexdigest()

    def list_dir(self, key: str) -> list[str]:
        folder = self.path(key)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(_STAGING_PREFIX))

    def publish_dir(
        self, source: Path, key: str, progress: Callable[[str], None] | None = None
    ) -> None:
        target = self.path(key)
        if target.exists():
            raise StorageError(f"{target} already exists")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target.parent))
            try:
                staged.chmod(0o755)  # mkdtemp's 0700 would hide it from a Triton of another user
                shutil.copytree(source, staged, dirs_exist_ok=True)
                os.rename(staged, target)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot publish {target}: {os_error_words(exc)}") from exc

    def remove_tree(self, key: str) -> None:
        target = self.path(key)
        if not target.exists():
            return
        # Rename first so a half-removed folder never looks like a version.
        doomed = target.with_name(f"{_STAGING_PREFIX}rm-{target.name}-{os.getpid()}")
        try:
            os.rename(target, doomed)
            shutil.rmtree(doomed)
        except OSError as exc:
            raise StorageError(f"cannot remove {target}: {os_error_words(exc)}") from exc

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        # Kept outside the repository, so taking a lock never changes what it holds.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        lock_dir = Path(tempfile.gettempdir()) / "repo-manager-locks"
        lock_dir.mkdir(exist_ok=True)
        lock_path = lock_dir / f"{digest}.{name}.lock"
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def walk_files(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                yield str((Path(dirpath) / name).relative_to(self.root))
