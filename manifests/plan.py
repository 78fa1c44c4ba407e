"""The shard plan: a deterministic split of a normalized manifest into shards of `shard_size` rows.

Order "style" (default) sorts rows by (style, uid) so rows sharing a style are contiguous and a shard
reuses that style's features; order "uid" sorts by uid alone. Strings compare as bytes, so the order is
the same on every machine. Shards are filled in that order: shard k holds rows k*shard_size onwards.
A manifest with per-row settings (width, height, steps, ...: manifests/row_settings.py) is sorted by
those first (nulls last), so rows that share a size and settings are contiguous and the worker's batches,
which never mix them, stay full; rows with a size or setting that cannot be generated are refused,
named. Without those columns the order is exactly as described above.

Duplicate uids are refused with the rows named; `dedupe=True` keeps each uid's first row (lowest row
number) and records the dropped rows in `Plan.dropped_rows`.

Fingerprint: sha256 hex over b"stylegen-plan-v1" + canonical JSON of
{"manifest": table_fingerprint(manifest), "shard_size", "order", "dedupe", "plan_version"}, where the
manifest fingerprint covers every cell of every column (manifests/fingerprint.py). It changes when any
cell, column or parameter changes, and not with file names, chunking or the machine.

plan.parquet holds one row per planned row: `shard_id` (int32), then every normalized manifest column
(uid, row, prompt, style, content, id, seed, extras), sorted by shard. Row groups hold whole shards
(as many as fit in ~16k rows), so `read_shard` reads one row group. The schema metadata key
`stylegen.plan` holds the parameters and fingerprints as JSON (`read_plan_info`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from manifests.fingerprint import table_fingerprint
from manifests.read import filesystem_and_path, read_manifest, write_whole_file
from manifests.row_settings import present_columns
from manifests.schema import CONTENT, ROW, STYLE, UID, ManifestError, format_rows
from manifests.validate import duplicate_uid_groups, row_setting_problems

PLAN_VERSION = 1
PLAN_FILE = "plan.parquet"
METADATA_KEY = b"stylegen.plan"
ORDERS = ("style", "uid")
ROW_GROUP_TARGET_ROWS = 16_384


class ShardCounts:
    """num_shards and shard_sizes of a plan with `num_rows` and `shard_size` (in memory or streamed)."""

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    @property
    def shard_sizes(self) -> list[int]:
        full, rest = divmod(self.num_rows, self.shard_size)
        return [self.shard_size] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Plan(ShardCounts):
    manifest: pa.Table  # the normalized manifest, in its original order
    positions: np.ndarray  # manifest positions in plan order (duplicates already dropped)
    shard_size: int
    order: str
    dedupe: bool
    manifest_fingerprint: str
    fingerprint: str
    dropped_rows: tuple[int, ...] = field(default=())

    @property
    def num_rows(self) -> int:
        return len(self.positions)

    def shard(self, shard_id: int) -> pa.Table:
        """The plan rows of one shard (same columns as plan.parquet)."""
        _check_shard_id(shard_id, self.num_shards, "plan")
        start = shard_id * self.shard_size
        return self._rows(start, min(start + self.shard_size, self.num_rows))

    @cached_property
    def table(self) -> pa.Table:
        """The whole plan table, as written to plan.parquet (built on first use)."""
        return self._rows(0, self.num_rows)

    def _rows(self, start: int, stop: int) -> pa.Table:
        rows = self._taker.take(self.positions[start:stop])
        shard_ids = (np.arange(start, stop) // self.shard_size).astype(np.int32)
        return rows.add_column(0, "shard_id", pa.array(shard_ids, pa.int32()))

    @cached_property
    def _taker(self) -> _RowTaker:
        return _RowTaker(self.manifest)

    def info(self) -> dict:
        """Parameters and fingerprints, as stored in plan.parquet's metadata."""
        return {
            "plan_version": PLAN_VERSION,
            "fingerprint": self.fingerprint,
            "manifest_fingerprint": self.manifest_fingerprint,
            "shard_size": self.shard_size,
            "order": self.order,
            "dedupe": self.dedupe,
            "num_rows": self.num_rows,
            "num_shards": self.num_shards,
            "dropped_rows": len(self.dropped_rows),
        }

    def summary(self) -> dict:
        """What `stylegen manifest plan` prints."""
        has_content = pc.is_valid(self.manifest.column(CONTENT)).to_numpy()[self.positions]
        return {
            "rows": self.num_rows,
            "shards": self.num_shards,
            "styles": pc.count_distinct(
                _style_ranks(self.manifest.column(STYLE))
            ).as_py(),  # dedupe keeps all
            "composition rows": int(has_content.sum()),
            "dropped duplicates": len(self.dropped_rows),
            "fingerprint": self.fingerprint,
        }

    def write(self, directory: str | Path) -> str:
        """Write `<directory>/plan.parquet` (local folder or s3:// prefix); returns its path/URI."""
        target = str(directory).rstrip("/") + "/" + PLAN_FILE
        write_whole_file(target, self.write_parquet)  # readers never see a half-written plan
        return target

    def write_parquet(self, where) -> None:
        """Stream the plan into a path or writable file object, one row group of whole shards at a time."""
        schema = self._rows(0, 0).schema.with_metadata(
            {METADATA_KEY: json.dumps(self.info(), sort_keys=True)}
        )
        group_rows = self.shard_size * max(1, ROW_GROUP_TARGET_ROWS // self.shard_size)
        with pq.ParquetWriter(where, schema, compression="zstd") as writer:
            for start in range(0, self.num_rows, group_rows):
                rows = self._rows(start, min(start + group_rows, self.num_rows))
                writer.write_table(rows.replace_schema_metadata(schema.metadata), row_group_size=group_rows)


class _RowTaker:
    """Rows by position from a table with chunked columns. Arrow's Table.take concatenates every chunk
    first (a full copy per call); this takes from each record batch and restores the order."""

    def __init__(self, table: pa.Table):
        plain = [
            f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema
        ]
        self.schema = pa.schema(plain)  # plan rows are always plain strings, even from a compact manifest
        self.batches = table.to_batches()  # zero-copy slices at the chunk boundaries
        self.starts = np.cumsum([0] + [batch.num_rows for batch in self.batches])

    def take(self, positions: np.ndarray) -> pa.Table:
        batch_of = np.searchsorted(self.starts, positions, side="right") - 1
        by_batch = np.argsort(batch_of, kind="stable")
        bounds = np.searchsorted(batch_of[by_batch], np.arange(len(self.batches) + 1))
        parts = []
        for index in np.flatnonzero(np.diff(bounds)):
            local = positions[by_batch[bounds[index] : bounds[index + 1]]] - self.starts[index]
            parts.append(self.batches[index].take(pa.array(local)).cast(self.schema))
        gathered = pa.Table.from_batches(parts, schema=self.schema).combine_chunks()
        return gathered.take(pa.array(np.argsort(by_batch, kind="stable")))


def _style_ranks(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each row's style as its int32 rank in byte order (null stays null). Sorting by it equals sorting
    by the strings, costs less, and works on compact (dictionary-encoded) tables too."""
    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    encoded = pa.table({"style": encoded}).unify_dictionaries().column("style")  # one shared dictionary
    if encoded.num_chunks == 0:
        return pa.chunked_array([], pa.int32())
    dictionary = encoded.chunk(0).dictionary
    rank = np.empty(len(dictionary), dtype=np.int32)
    rank[pc.sort_indices(dictionary).to_numpy()] = np.arange(len(dictionary), dtype=np.int32)
    ranks = pa.array(rank)
    return pa.chunked_array([ranks.take(chunk.indices) for chunk in encoded.chunks], pa.int32())


def make_plan(table: pa.Table, shard_size: int, order: str = "style", *, dedupe: bool = False) -> Plan:
    """Plan a normalized manifest (the output of read_manifest, plain or compact)."""
    check_plan_options(shard_size, order)
    missing = [c for c in (UID, ROW) if c not in table.column_names]
    if missing:
        raise ValueError(f"the table lacks {missing}: plan the output of read_manifest()")
    refuse_bad_settings(table)
    positions = plan_order(table, order)
    dropped: list[int] = []
    duplicates = duplicate_uid_groups(table, order=positions)
    if duplicates and not dedupe:
        raise duplicates_error(duplicates)
    if duplicates:  # keep the first (lowest row) of each run; the sort put it first
        drop = np.concatenate([rows[1:] for _, rows in duplicates])
        dropped = sorted(drop.tolist())
        positions = positions[~np.isin(table.column(ROW).to_numpy()[positions], drop)]
    manifest_fingerprint = table_fingerprint(table)
    fingerprint = plan_fingerprint(manifest_fingerprint, shard_size, order, dedupe)
    return Plan(
        table, positions, shard_size, order, dedupe, manifest_fingerprint, fingerprint, tuple(dropped)
    )


def check_plan_options(shard_size: int, order: str) -> None:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def sort_keys(table: pa.Table, order: str) -> dict[str, pa.ChunkedArray]:
    """The plan order, as key columns compared in turn, ascending, nulls last: the per-row settings (only
    when the manifest has them), then (style, uid, row) for "style", (uid, row) for "uid". The one
    definition of the order: make_plan sorts by it and the streamed planner (manifests/plan_stream.py)
    merges by it. Equal uids must stay adjacent in it (the uid hashes the style and the settings), which
    the duplicate check relies on."""
    keys = {name: table.column(name) for name in present_columns(table.column_names)}
    keys |= {STYLE: table.column(STYLE)} if order == "style" else {}
    return keys | {UID: table.column(UID), ROW: table.column(ROW)}


def plan_order(table: pa.Table, order: str) -> np.ndarray:
    """The positions of `table`'s rows in plan order. Text keys other than the uid sort by their rank in
    byte order: the same order, cheaper, and for compact (dictionary) tables too."""
    keys = {
        name: _style_ranks(column) if name != UID and _is_text(column.type) else column
        for name, column in sort_keys(table, order).items()
    }
    by = [(name, "ascending") for name in keys]
    return pc.sort_indices(pa.table(keys), sort_keys=by).to_numpy().astype(np.int64)  # nulls last


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_dictionary(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def duplicates_error(duplicates: list[tuple[str, np.ndarray]]) -> ManifestError:
    """The refusal of a manifest whose rows share uids (`duplicates`: (uid, rows) in plan order)."""
    shown = "; ".join(f"uid {uid}: {format_rows(rows)}" for uid, rows in duplicates[:5])
    more = f" (and {len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
    return ManifestError(
        f"{len(duplicates)} duplicate uid(s), i.e. rows with the same style, content, prompt and seed: "
        f"{shown}{more}. Use --dedupe to keep the first row of each.",
        column=UID,
        rows=[int(r) for _, rows in duplicates for r in rows],
    )


def plan_fingerprint(manifest_fingerprint: str, shard_size: int, order: str, dedupe: bool) -> str:
    params = {"shard_size": shard_size, "order": order, "dedupe": dedupe, "plan_version": PLAN_VERSION}
    canonical = json.dumps(
        {"manifest": manifest_fingerprint, **params}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(b"stylegen-plan-v1" + canonical.encode()).hexdigest()


def refuse_bad_settings(table: pa.Table) -> None:
    """Refuse rows whose size or settings cannot be generated, naming them (the first five problems)."""
    problems = row_setting_problems(table)
    if problems:
        shown = "; ".join(problem.message() for problem in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ManifestError(
            f"{len(problems)} row setting problem(s): {shown}{more}",
            column=problems[0].column,
            rows=[row for problem in problems for row in problem.rows],
        )


def _plan_file(plan_uri: str | Path) -> tuple[pa_fs.FileSystem, str]:
    uri = str(plan_uri)
    filesystem, path = filesystem_and_path(uri)
    if filesystem.get_file_info(path).type == pa_fs.FileType.Directory:
        path = path.rstrip("/") + "/" + PLAN_FILE
    return filesystem, path


def read_plan_info(plan_uri: str | Path) -> dict:
    """The parameters and fingerprints stored in a plan.parquet (reads only the footer)."""
    filesystem, path = _plan_file(plan_uri)
    metadata = pq.read_schema(path, filesystem=filesystem).metadata or {}
    if METADATA_KEY not in metadata:
        raise ManifestError(f"{plan_uri}: not a stylegen plan (no {METADATA_KEY.decode()} metadata)")
    return json.loads(metadata[METADATA_KEY])


def read_shard(plan: str | Path | BinaryIO, shard_id: int) -> pa.Table:
    """One shard's rows from plan.parquet, reading only the row groups whose shard_id statistics can
    hold it. `plan` is the file, the folder holding it (local or s3://), or an open binary file
    (e.g. from a storage layer with its own credentials)."""
    if hasattr(plan, "read"):
        return _read_shard_from(plan, shard_id, "plan.parquet")
    filesystem, path = _plan_file(plan)
    with filesystem.open_input_file(path) as handle:
        return _read_shard_from(handle, shard_id, plan)


def _read_shard_from(handle, shard_id: int, where) -> pa.Table:
    parquet = pq.ParquetFile(handle)
    metadata = parquet.schema_arrow.metadata or {}
    if METADATA_KEY not in metadata:
        raise ManifestError(f"{where}: not a stylegen plan (no {METADATA_KEY.decode()} metadata)")
    _check_shard_id(shard_id, json.loads(metadata[METADATA_KEY])["num_shards"], where)
    column = parquet.schema_arrow.get_field_index("shard_id")
    groups = []
    for index in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(index).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min <= shard_id <= stats.max:
            groups.append(index)
    rows = parquet.read_row_groups(groups)
    return rows.filter(pc.equal(rows.column("shard_id"), pa.scalar(shard_id, pa.int32())))


def _check_shard_id(shard_id: int, num_shards: int, where) -> None:
    if not 0 <= shard_id < num_shards:
        raise ManifestError(f"{where}: no shard {shard_id} (the plan has shards 0..{num_shards - 1})")


def plan_manifest(uri: str, shard_size: int, order: str = "style", *, dedupe: bool = False) -> Plan:
    """read_manifest(compact=True) + make_plan: the memory-lean way to plan a big manifest."""
    return make_plan(read_manifest(uri, compact=True), shard_size, order, dedupe=dedupe)
