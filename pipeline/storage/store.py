"""Store: an ObjectStore with the shard commit protocol (pipeline.storage.commit) as methods."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.storage import commit
from pipeline.storage.base import ObjectStore, Progress
from pipeline.storage.objects import LocalFile


class Store(ObjectStore):
    """Where an output lives. All keys are validated with layout.validate_key."""

    def commit_shard(
        self,
        shard_id: int,
        *,
        tar: Path | LocalFile,
        table: Path | LocalFile,
        rejected: Path | LocalFile | None = None,
        summary: Mapping[str, Any],
        attempt_id: str | None = None,
        progress: Progress | None = None,
        legacy_layout: bool = False,
    ) -> commit.CommitResult:
        """Upload a shard's finished local files and commit them atomically (see pipeline.storage.commit)."""
        return commit.commit_shard(
            self,
            shard_id,
            tar=tar,
            table=table,
            rejected=rejected,
            summary=summary,
            attempt_id=attempt_id,
            progress=progress,
            legacy_layout=legacy_layout,
        )

    def read_marker(self, shard_id: int) -> commit.ShardMarker | None:
        return commit.read_marker(self, shard_id)

    def committed_shards(self) -> dict[int, commit.ShardMarker]:
        return commit.committed_shards(self)

    def finalize(self) -> list[int]:
        return commit.finalize(self)

    def remove_orphans(self, older_than: timedelta = timedelta(hours=1)) -> list[str]:
        return commit.remove_orphans(self, older_than)
