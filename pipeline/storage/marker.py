"""The commit marker, `_SUCCESS/shard-NNNNNN.json`: the attempt that owns a shard, its files and summary."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.storage.objects import StorageError

MARKER_FORMAT = "stylegen.shard-marker/1"


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int
    sha256: str
    attempt_key: str  # where the committing attempt uploaded it


class ShardMarker(BaseModel):
    """The content of `_SUCCESS/shard-NNNNNN.json`."""

    model_config = ConfigDict(frozen=True)

    format: str = MARKER_FORMAT
    shard_id: int
    attempt_id: str
    committed_at: str  # ISO 8601, UTC
    files: dict[str, FileEntry]  # final key -> size, sha256, attempt key
    summary: dict[str, Any]  # from the caller, e.g. {"rows": 64, "kept": 60, "rejected": 3, "failed": 1}

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ShardMarker:
        try:
            return cls.model_validate_json(data)
        except ValidationError as error:
            raise StorageError(f"{where} is not a valid shard marker: {error}") from None
