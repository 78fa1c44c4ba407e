"""The committed shard parquets of an output, read as one table (the dataset side's one reader)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import OutputError
from pipeline.storage.layout import table_key_of


def iter_shard_tables(store, markers: Mapping[int, Any], *, keep=None, threads: int = 16):
    """(shard id, table, the parquet's whole schema) for each committed shard parquet (`markers`: shard
    id -> commit marker), in shard order, a few read ahead in parallel. `keep(name)` limits the columns
    read. Each parquet's key comes from its marker, so either layout reads the same."""

    def read(shard_id: int) -> tuple[int, pa.Table, pa.Schema]:
        key = table_key_of(shard_id, markers[shard_id].files)
        try:
            parquet = pq.ParquetFile(io.BytesIO(store.get_bytes(key)))
            names = [name for name in parquet.schema_arrow.names if keep is None or keep(name)]
            return shard_id, parquet.read(columns=names), parquet.schema_arrow
        except pa.ArrowException as error:
            raise OutputError(f"{store.url(key)} is not a readable parquet file: {error}") from None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(read, sorted(markers))


def read_shard_tables(store, markers: Mapping[int, Any], *, keep=None, threads: int = 16):
    """The committed shard parquets as one table (columns missing from some shards are null there), and
    the unified schema of all their columns (see iter_shard_tables)."""
    parts = [
        (table, schema) for _, table, schema in iter_shard_tables(store, markers, keep=keep, threads=threads)
    ]
    if not parts:
        empty = pa.schema([("uid", pa.string()), ("shard_id", pa.int64()), ("status", pa.string())])
        return empty.empty_table(), empty
    table = pa.concat_tables([table for table, _ in parts], promote_options="permissive")
    return table, pa.unify_schemas([schema for _, schema in parts], promote_options="permissive")


def with_status(rows: pa.Table, status: str) -> pa.Table:
    """The rows of one status (none when the table has no status column)."""
    if "status" not in rows.column_names:
        return rows.slice(0, 0)
    return rows.filter(pc.equal(rows.column("status"), status))


def newest_rows(rows: pa.Table) -> pa.Table:
    """Each uid's row from its highest shard id (its newest result); the table itself without repeats."""
    if rows.num_rows == 0 or pc.count_distinct(rows.column("uid")).as_py() == rows.num_rows:
        return rows
    newest = rows.group_by("uid").aggregate([("shard_id", "max")])
    key = lambda uids, shards: pc.binary_join_element_wise(uids, pc.cast(shards, uids.type), "#")  # noqa: E731
    wanted = key(newest.column("uid"), newest.column("shard_id_max"))
    return rows.filter(pc.is_in(key(rows.column("uid"), rows.column("shard_id")), value_set=wanted))


def failed_uids(store, markers: Mapping[int, Any]) -> set[str]:
    """The uids whose newest committed result is `failed`."""
    rows, _ = read_shard_tables(store, markers, keep=lambda name: name in ("uid", "shard_id", "status"))
    return set(with_status(newest_rows(rows), "failed").column("uid").to_pylist())
