"""LocalStore: an output folder. Whole-object writes go to a hidden temp file in the same folder, are
fsynced and renamed into place, so a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

from pipeline.storage.base import Progress
from pipeline.storage.layout import validate_key, validate_prefix
from pipeline.storage.objects import ObjectInfo, ObjectNotFound, ShardIntegrityError, StorageError
from pipeline.storage.store import Store

_CHUNK = 8 * 1024 * 1024
_TEMP_MARK = ".tmp-"  # temp files are named .<name>.tmp-<uuid>; keys may not start with '.'
# errnos of filesystems without hard links; there the marker falls back to O_EXCL.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


_WHAT_TO_DO = {
    errno.ENOSPC: "free some space on that filesystem (or choose another --output)",
    errno.EDQUOT: "free some space within your disk quota (or choose another --output)",
    errno.EROFS: "the filesystem is read-only: remount it read-write or choose another --output",
    errno.EXDEV: "keep the whole output folder on one filesystem (no mount or symlink inside it)",
    errno.EACCES: "no permission to write there: fix the folder's permissions or choose another --output",
    errno.EPERM: "no permission to write there: fix the folder's permissions or choose another --output",
}


def os_error_message(error: OSError, path: str | Path) -> str:
    """One line: the path, the system's reason and what to do; the rerun resumes where this stopped."""
    name = errno.errorcode.get(error.errno or 0, "")
    reason = error.strerror or str(error)
    what = _WHAT_TO_DO.get(error.errno or 0, "fix the cause")
    name = f" ({name})" if name else ""
    return f"cannot write {path}: {reason}{name}; {what}, then rerun the same command to resume"


@contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """OSError from the filesystem -> StorageError naming the path (a missing object stays as it is)."""
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except OSError as error:
        raise StorageError(os_error_message(error, path)) from None


def _create_in_folder(path: Path, tries: int = 5) -> BinaryIO:
    """Open a new file, making its folders. Another writer's delete may prune a folder we just made
    while it is still empty (LocalStore.delete removes empty attempt folders): make it again."""
    for attempt in range(tries):
        try:  # the pruning can also strike between two levels of mkdir's own recursion
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "wb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    def url(self, key: str) -> str:
        return str(self._path(key))

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write_atomically(self, key: str, fill: Callable[[BinaryIO], None]) -> Path:
        path = self._path(key)
        with _os_errors(path):
            temp = path.with_name(f".{path.name}{_TEMP_MARK}{uuid.uuid4().hex}")
            try:
                with _create_in_folder(temp) as file:
                    fill(file)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        return path

    # --- plain object operations -----------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomically(key, lambda file: file.write(data))

    def put_file(
        self, key: str, path: str | Path, *, sha256: str | None = None, progress: Progress | None = None
    ) -> ObjectInfo:
        digest = hashlib.sha256()
        size = 0

        def copy(target: BinaryIO) -> None:
            nonlocal size
            with open(path, "rb") as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            if sha256 is not None and digest.hexdigest() != sha256:  # checked before the rename
                raise ShardIntegrityError(
                    f"{path} changed while being stored as {key}: "
                    f"sha256 {digest.hexdigest()} != expected {sha256}"
                )

        self._write_atomically(key, copy)
        info = self.head(key)
        if info is None or info.size != size:
            raise ShardIntegrityError(f"{self.url(key)}: stored size differs from the {size} bytes written")
        return ObjectInfo(key, size, info.modified, digest.hexdigest())

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"{self.url(key)} does not exist") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"{self.url(key)} does not exist") from None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        start = self.root / prefix.rpartition("/")[0]
        found = []
        for folder, _, names in os.walk(start):
            for name in names:
                if name.startswith("."):
                    continue  # temp files and anything else that cannot be a key
                key = (Path(folder) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and (info := self.head(key)) is not None:
                    found.append(info)
        return sorted(found, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            with _os_errors(path):
                path.unlink(missing_ok=True)
            self._prune_empty_folders(path.parent)

    def _prune_empty_folders(self, folder: Path) -> None:
        # Attempt folders are per attempt; leave no empty trees behind once their files are gone.
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # --- primitives of the commit protocol -------------------------------------------------------

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Exclusive create. The bytes are written and fsynced to a temp file first and then hard-linked
        to the key (link() fails if the key exists), so the key never exists half-written; on
        filesystems without hard links it falls back to O_CREAT|O_EXCL on the key itself."""
        path = self._path(key)
        with _os_errors(path):
            temp = path.with_name(f".{path.name}{_TEMP_MARK}{uuid.uuid4().hex}")
            try:
                with _create_in_folder(temp) as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                try:
                    os.link(temp, path)
                except FileExistsError:
                    return False
                except OSError as error:
                    if error.errno not in _NO_HARD_LINKS:
                        raise
                    return self._create_exclusive(path, data)
            finally:
                temp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        return True

    @staticmethod
    def _create_exclusive(path: Path, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return True

    def publish(self, source: str, destination: str, size: int, sha256: str) -> None:
        source_path, destination_path = self._path(source), self._path(destination)
        try:
            actual = source_path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url(source)} does not exist") from None
        if actual != size:
            raise ShardIntegrityError(f"{self.url(source)} has {actual} bytes, the marker says {size}")
        with _os_errors(destination_path):
            destination_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source_path, destination_path)
            except FileNotFoundError:
                raise ObjectNotFound(f"{self.url(source)} does not exist") from None
            _fsync_dir(destination_path.parent)
        self._prune_empty_folders(source_path.parent)

    def abort_stale_multipart_uploads(self, older_than: timedelta = timedelta(hours=1)) -> int:
        cutoff = datetime.now(timezone.utc) - older_than
        removed = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = Path(folder) / name
                if not (name.startswith(".") and _TEMP_MARK in name):
                    continue
                try:
                    if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) <= cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue  # its writer finished or removed it meanwhile
        return removed
