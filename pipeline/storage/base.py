"""ObjectStore: the handful of object operations every backend implements.

Two implementations: LocalStore (a folder) and S3Store (boto3), both Stores (pipeline.storage.store:
these operations plus the shard commit protocol built on them). Keys are relative '/'-paths under the
store root (see pipeline.storage.layout); a key can never leave the root.
"""

from __future__ import annotations

import mimetypes
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from pipeline.storage.objects import ObjectInfo

Progress = Callable[[int], None]  # called with the number of bytes sent since the last call

_CONTENT_TYPES = {".tar": "application/x-tar", ".parquet": "application/vnd.apache.parquet"}


def content_type_for(key: str) -> str:
    suffix = Path(key).suffix
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


class ObjectStore(ABC):
    """Where an output lives. All keys are validated with layout.validate_key."""

    uri: str  # the root: a folder path or s3://bucket/prefix

    def url(self, key: str) -> str:
        """Where readers find `key` (a path for LocalStore, s3://... for S3Store)."""
        return f"{self.uri.rstrip('/')}/{key}"

    # --- plain object operations -----------------------------------------------------------------

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object; readers see the old object or the new one, never a part."""

    @abstractmethod
    def put_file(
        self, key: str, path: str | Path, *, sha256: str | None = None, progress: Progress | None = None
    ) -> ObjectInfo:
        """Upload a finished local file and verify the stored size and sha256 (ShardIntegrityError
        otherwise). `sha256` is computed when not given."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFound when missing."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A seekable binary reader (for pyarrow: reading a Parquet footer fetches only the footer)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, time and (where kept) sha256 of an object, or None if it does not exist."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing ones are ignored."""

    # --- primitives of the commit protocol -------------------------------------------------------

    @abstractmethod
    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist; True if this call created it, False if it existed."""

    @abstractmethod
    def publish(self, source: str, destination: str, size: int, sha256: str) -> None:
        """Make `source`'s bytes visible at `destination` in one step (server-side copy on S3, rename
        locally; the source may be gone afterwards) and verify them. ObjectNotFound if no source."""

    @abstractmethod
    def abort_stale_multipart_uploads(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Clean up incomplete uploads left by killed writers (S3: multipart uploads; local: temp files)
        started more than `older_than` ago. Returns how many were removed."""
