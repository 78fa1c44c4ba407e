"""The shard plan of a manifest too big to hold, streamed through disk: plan.parquet with the same rows in
the same order as make_plan's (manifests/plan.py), in the memory of a few batches.

An external sort by the plan's one sort-key function (`plan.sort_keys`):
1. runs: the manifest is read RUN_ROWS rows at a time (normalized, with uids); each batch is sorted by
   `plan_order` and spilled to a run file, and fed to the manifest's fingerprint (TableHasher);
2. merge: each run is read back a row group at a time, sized so that all runs together hold about
   MERGE_BUDGET_ROWS (the merge's memory does not grow with the number of runs). The smallest last key
   among the runs still being read bounds what is safe to emit: every buffered row up to it (a binary
   search per run over the key tuples), sorted by `plan_order`, comes next in plan order;
3. the merged rows get their shard ids and are written in row groups of whole shards, as
   `Plan.write_parquet` does. Equal uids are adjacent in plan order, so duplicates are found (or, with
   dedupe, each uid's first row kept) by comparing each row with the one before it. The file's metadata
   is written first as if no row were dropped; when dedupe drops some, the file is rewritten once.
What the driver keeps is a StreamedPlan: the counts, fingerprints and the file, no rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.fingerprint import TableHasher
from manifests.plan import (
    METADATA_KEY,
    PLAN_FILE,
    PLAN_VERSION,
    ROW_GROUP_TARGET_ROWS,
    ShardCounts,
    check_plan_options,
    duplicates_error,
    plan_fingerprint,
    plan_order,
    refuse_bad_settings,
    sort_keys,
)
from manifests.read import iter_manifest, manifest_rows, write_whole_file
from manifests.schema import ROW, UID, ManifestError

RUN_ROWS = 1 << 20  # rows sorted in memory at a time
MERGE_ROWS = 1 << 14  # rows read back from each run at a time, at most
MERGE_BUDGET_ROWS = 1 << 19  # rows read back from all runs together: the merge's memory, whatever the runs
MIN_MERGE_ROWS = 1 << 10


@dataclass
class StreamedPlan(ShardCounts):
    """A plan written to disk: what the driver needs of it (Plan's fields but the rows) and its file."""

    path: Path  # plan.parquet, in a temporary folder this object owns
    manifest_rows: int
    num_rows: int
    shard_size: int
    order: str
    dedupe: bool
    manifest_fingerprint: str
    fingerprint: str
    schema: pa.Schema  # the normalized manifest's
    dropped_rows: tuple[int, ...] = field(default=())
    _folder: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @cached_property
    def table(self) -> pa.Table:
        """The whole plan table (read from the file: for callers that need every row)."""
        return pq.read_table(self.path).replace_schema_metadata(None)

    def write(self, directory: str | Path) -> str:
        """Copy plan.parquet into `directory` (local folder or s3:// prefix); returns its path/URI."""
        target = str(directory).rstrip("/") + "/" + PLAN_FILE
        write_whole_file(target, lambda where: _copy(self.path, where))
        return target


def stream_plan(
    uri: str, shard_size: int, order: str = "style", *, dedupe: bool = False, run_rows: int = RUN_ROWS
) -> StreamedPlan:
    """Plan the manifest at `uri` into a plan.parquet on disk (see the module's docstring)."""
    check_plan_options(shard_size, order)
    folder = tempfile.TemporaryDirectory(prefix="stylegen-plan-")
    work = Path(folder.name)
    expected_runs = -(-(manifest_rows(uri) or run_rows) // run_rows)
    group_rows = min(MERGE_ROWS, max(MIN_MERGE_ROWS, MERGE_BUDGET_ROWS // expected_runs))
    runs, rows, schema, manifest_fingerprint = _spill_runs(uri, order, run_rows, group_rows, work)
    fingerprint = plan_fingerprint(manifest_fingerprint, shard_size, order, dedupe)
    info = {
        "plan_version": PLAN_VERSION,
        "fingerprint": fingerprint,
        "manifest_fingerprint": manifest_fingerprint,
        "shard_size": shard_size,
        "order": order,
        "dedupe": dedupe,
        "num_rows": rows,  # until a duplicate is dropped
        "num_shards": -(-rows // shard_size),
        "dropped_rows": 0,
    }
    writer = _PlanWriter(work / PLAN_FILE, shard_size, info)
    duplicates: list[tuple[str, np.ndarray]] = []
    previous: tuple[str | None, int | None] = (None, None)  # the last merged row's uid and row number
    dropped: list[np.ndarray] = []
    for part in _merge(runs, order):
        uids = part.column(UID).to_numpy(zero_copy_only=False)
        same = np.empty(len(uids), dtype=bool)  # same[i]: row i has the uid of the row before it
        same[0] = uids[0] == previous[0]
        same[1:] = uids[1:] == uids[:-1]
        before, previous = previous[1], (uids[-1], int(part.column(ROW)[-1].as_py()))
        if same.any():
            _note_duplicates(part, same, before, duplicates, dropped)
            part = part.filter(pa.array(~same))
        writer.write(part)
    if duplicates and not dedupe:
        folder.cleanup()
        raise duplicates_error(duplicates)
    drops = tuple(sorted(np.concatenate(dropped).tolist())) if dropped else ()
    planned = writer.finish()
    writer.close(
        {**info, "num_rows": planned, "num_shards": -(-planned // shard_size), "dropped_rows": len(drops)}
    )
    for run in runs:
        run.unlink()
    return StreamedPlan(
        writer.path, rows, planned, shard_size, order, dedupe, manifest_fingerprint, fingerprint,
        schema, drops, folder,
    )  # fmt: skip


def _note_duplicates(
    part: pa.Table, same: np.ndarray, before: int | None, groups: list, dropped: list
) -> None:
    """Record the rows of `part` that repeat the uid of the row before them (`before`: the row number of
    the previous part's last row): as dropped rows, and as (uid, rows) groups in plan order."""
    uids = part.column(UID).to_pylist()
    rows = part.column(ROW).to_numpy()
    dropped.append(rows[same])
    for index in np.flatnonzero(same):
        if groups and groups[-1][0] == uids[index]:
            groups[-1] = (uids[index], np.append(groups[-1][1], rows[index]))
        else:
            first = rows[index - 1] if index else before
            groups.append((uids[index], np.array([first, rows[index]], dtype=np.int64)))


def _spill_runs(
    uri: str, order: str, run_rows: int, group_rows: int, work: Path
) -> tuple[list[Path], int, pa.Schema, str]:
    """The manifest as sorted run files in `work`; its rows, schema and fingerprint."""
    hasher, runs, rows, schema = TableHasher(), [], 0, None
    for batch in iter_manifest(uri, run_rows):
        try:
            hasher.update(batch)
        except ValueError as error:
            raise ManifestError(f"{uri}: the files disagree on a column type: {error}") from None
        refuse_bad_settings(batch)  # at the first batch with a bad size or setting, naming its rows
        schema = batch.schema
        runs.append(_spill(batch, order, work / f"run-{len(runs):06d}.parquet", group_rows))
        rows += batch.num_rows
    return runs, rows, schema, hasher.hexdigest()


def _spill(batch: pa.Table, order: str, path: Path, group_rows: int) -> Path:
    """One run: the batch sorted by plan order, in text columns of plain strings, in row groups of
    `group_rows` (the merge reads one group of each run at a time)."""
    plain = pa.schema(
        f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in batch.schema
    )
    rows = batch.take(pa.array(plan_order(batch, order))).cast(plain)
    pq.write_table(rows, path, row_group_size=group_rows, compression="lz4")  # fast: read back once
    return path


def _key(keys: list[pa.ChunkedArray], index: int) -> tuple:
    """Row `index`'s sort key as a Python tuple that orders as Arrow sorts: strings by code point (= UTF-8
    byte order), nulls last."""
    return tuple((value is None, value) for value in (column[index].as_py() for column in keys))


class _Keys:
    """A buffered table's sort keys, indexable for bisect."""

    def __init__(self, table: pa.Table, order: str):
        self.columns = list(sort_keys(table, order).values())
        self.rows = table.num_rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> tuple:
        return _key(self.columns, index)


def _merge(runs: list[Path], order: str):
    """The rows of the sorted `runs`, merged into plan order, a part at a time."""
    readers = [_row_groups(run) for run in runs]
    buffers: list[pa.Table | None] = [None] * len(runs)
    more = [True] * len(runs)
    while True:
        for index, reader in enumerate(readers):
            while more[index] and (buffers[index] is None or buffers[index].num_rows == 0):
                group = next(reader, None)
                if group is None:
                    more[index] = False
                else:
                    buffers[index] = group
        live = [i for i, table in enumerate(buffers) if table is not None and table.num_rows]
        if not live:
            return
        bounding = [i for i in live if more[i]]
        if bounding:  # rows past the smallest last key still being read may have smaller ones behind them
            bound = min(_Keys(buffers[i], order)[buffers[i].num_rows - 1] for i in bounding)
            counts = {i: bisect_right(_Keys(buffers[i], order), bound) for i in live}
        else:
            counts = {i: buffers[i].num_rows for i in live}
        parts = [buffers[i].slice(0, counts[i]) for i in live if counts[i]]
        for i in live:
            buffers[i] = buffers[i].slice(counts[i])
        merged = pa.concat_tables(parts).combine_chunks()
        yield merged.take(pa.array(plan_order(merged, order)))


def _row_groups(path: Path):
    """A run's row groups, one at a time: a batch reader reads ahead."""
    run = pq.ParquetFile(path)
    for index in range(run.num_row_groups):
        yield run.read_row_group(index)


class _PlanWriter:
    """plan.parquet written as its rows arrive in plan order: shard ids, row groups of whole shards, and
    the plan's metadata (`info`) in its schema. Arrow reads a schema's metadata as it was when writing
    began, so when the counts turn out otherwise (duplicates dropped), `close` rewrites the file."""

    def __init__(self, path: Path, shard_size: int, info: dict):
        self.path, self.shard_size, self.info = path, shard_size, info
        self.group_rows = shard_size * max(1, ROW_GROUP_TARGET_ROWS // shard_size)
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, part: pa.Table) -> None:
        if part.num_rows:
            self._pending.append(part)
            self._pending_rows += part.num_rows
        while self._pending_rows >= self.group_rows:
            self._flush(self.group_rows)

    def finish(self) -> int:
        """Write what is left; returns the plan's rows."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        return self.rows

    def close(self, info: dict) -> None:
        """Finish the file with `info` as its metadata (rewritten a row group at a time if it differs
        from the one it was begun with)."""
        self.finish()
        if self._writer is None:
            return
        self._writer.close()
        if info == self.info:
            return
        begun = self.path.with_suffix(".begun")
        self.path.rename(begun)
        source = pq.ParquetFile(begun)
        schema = source.schema_arrow.with_metadata(_metadata(info))
        with pq.ParquetWriter(self.path, schema, compression="zstd") as writer:
            for index in range(source.num_row_groups):
                group = source.read_row_group(index).replace_schema_metadata(schema.metadata)
                writer.write_table(group, row_group_size=self.group_rows)
        begun.unlink()

    def _flush(self, count: int) -> None:
        rows = pa.concat_tables(self._pending).combine_chunks()
        group, rest = rows.slice(0, count), rows.slice(count)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        shard_ids = ((self.rows + np.arange(count)) // self.shard_size).astype(np.int32)
        group = group.add_column(0, "shard_id", pa.array(shard_ids, pa.int32()))
        group = group.replace_schema_metadata(_metadata(self.info))
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, group.schema, compression="zstd")
        self._writer.write_table(group, row_group_size=self.group_rows)
        self.rows += count


def _metadata(info: dict) -> dict:
    return {METADATA_KEY: json.dumps(info, sort_keys=True)}


def _copy(source: Path, where) -> None:
    if hasattr(where, "write"):
        with open(source, "rb") as file:
            shutil.copyfileobj(file, where)
    else:
        shutil.copyfile(source, where)
