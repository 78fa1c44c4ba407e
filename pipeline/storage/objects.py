"""Small value types and errors shared by the stores and the commit protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.errors import UserError

_CHUNK = 8 * 1024 * 1024


class OutputURIError(UserError, ValueError):
    """An output location that cannot be used as given (no bucket, unknown scheme, S3 options for a
    folder); the message names it."""

    exit_code = 2


class StorageError(UserError, RuntimeError):
    """An object-store operation failed; the message names the operation and the object, never a secret."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object does not exist."""


class ShardIntegrityError(StorageError):
    """Stored bytes do not match what the commit recorded (size or sha256), or a committed shard's
    objects are gone."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store root
    size: int
    modified: datetime  # timezone-aware
    sha256: str | None = None  # hex, when the store keeps one (S3 object metadata); None otherwise
    etag: str | None = None  # S3's ETag without quotes (an MD5 for single-part uploads); None locally


@dataclass(frozen=True)
class LocalFile:
    """A finished local file with its size and sha256, ready to be committed."""

    path: Path
    size: int
    sha256: str

    @classmethod
    def from_path(cls, path: str | Path) -> LocalFile:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return cls(Path(path), size, digest.hexdigest())
