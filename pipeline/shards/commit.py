"""The one way a shard is published: write its tar(s) and parquet into a private temporary folder and
commit them through the store's commit protocol (pipeline.storage.commit).

The worker, the driver (a shard that failed every attempt) and the derived datasets (select, dedup)
all come through here, so a shard's files are always written by the same writers and its marker's
summary always counts the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.shards.table import ShardRow, write_shard_table
from pipeline.shards.tar import ShardSample, write_tar


@dataclass(frozen=True)
class ShardContents:
    """What goes into a shard's files: the kept tar's samples, the parquet's rows (every row of the
    shard), the run's parquet columns, and the rejected tar's samples (None: the shard has no such tar)."""

    kept: Sequence[ShardSample]
    rows: Sequence[ShardRow]
    schema: pa.Schema | None = None  # see pipeline.shards.table.build_shard_table
    rejected: Sequence[ShardSample] | None = None


def commit_shard_files(
    store,
    shard_id: int,
    contents: ShardContents,
    *,
    attempt_id: str,
    legacy_layout: bool,
    summary_extra: Mapping[str, Any] | None = None,
    work_dir: Path | None = None,
) -> Any:
    """Write `contents` as the shard's files and commit them with `store.commit_shard`; returns what
    it returns (a CommitResult: whether this attempt won). The marker's summary is the parquet's row
    counts plus `summary_extra`; `legacy_layout`: the output is of format 1 (parquets under shards/);
    `work_dir`: where the temporary folder goes (the system's temporary folder by default)."""
    with tempfile.TemporaryDirectory(prefix=f"stylegen-shard-{shard_id:06d}-", dir=work_dir) as name:
        folder = Path(name)
        tar, table = folder / "kept.tar", folder / "rows.parquet"
        write_tar(contents.kept, tar)
        stats = write_shard_table(contents.rows, table, shard_id, contents.schema)
        rejected = None
        if contents.rejected is not None:
            rejected = folder / "rejected.tar"
            write_tar(contents.rejected, rejected)
        return store.commit_shard(
            shard_id,
            tar=tar,
            table=table,
            rejected=rejected,
            summary={**stats.counts(), **(summary_extra or {})},
            attempt_id=attempt_id,
            legacy_layout=legacy_layout,
        )
