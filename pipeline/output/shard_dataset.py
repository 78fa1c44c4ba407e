"""The committed shard parquets of an output as one pyarrow dataset: what reads 10^6 shards in Arrow's
own threads, only the columns asked for, with no Python work per file.

- The files are the ones the commit markers name (a parquet of a shard without a marker is not read, and
  either layout reads the same), with the sizes the markers record, so opening one costs no HEAD.
- The store is read through its pyarrow filesystem (pipeline.storage.arrow_fs): S3 with the store's
  endpoint, addressing and credentials. A store Arrow cannot read is read through the store instead.
- Columns: a run writes every shard with one schema (pipeline.shards.table), and an --append or
  --retry-failed generation may add columns, so the dataset's schema unifies the footers of a sample
  (the first shard of each generation, and shards spread evenly over the output) rather than reading
  10^6 footers; a column missing from a shard reads as null there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from pipeline.errors import OutputError
from pipeline.storage.layout import table_key_of

SCHEMA_SAMPLE = 16  # footers read for the schema, besides each generation's first shard
READ_AHEAD = 64  # files in flight: a shard parquet is small, so a scan is bound by latency
_EMPTY = pa.schema([("uid", pa.string()), ("shard_id", pa.int64()), ("status", pa.string())])


class ShardDataset:
    """The shard parquets of `markers` (shard id -> commit marker). `first_shards`: the first shard id of
    each generation of the run (their footers are part of the schema's sample)."""

    def __init__(self, store, markers: Mapping[int, Any], *, first_shards: Iterable[int] = ()):
        from pipeline.storage.arrow_fs import arrow_filesystem

        self.store = store
        self.keys = {shard: table_key_of(shard, marker.files) for shard, marker in sorted(markers.items())}
        self.sizes = {shard: markers[shard].files[key].size for shard, key in self.keys.items()}
        reach = arrow_filesystem(store)
        self.filesystem, self.root = reach if reach is not None else (None, "")
        self.schema = self._sample_schema(first_shards) if self.keys else _EMPTY

    def columns(self, keep: Callable[[str], bool]) -> list[str]:
        """The dataset's columns that `keep(name)` wants, in file order."""
        return [name for name in self.schema.names if keep(name)]

    def read(self, columns: list[str] | Mapping[str, ds.Expression], shards: Iterable[int] | None = None):
        """One table of `columns` (names, or name -> expression over the files' columns) over every shard,
        or over `shards` only, in shard order."""
        chosen = sorted(self.keys) if shards is None else sorted(set(shards) & self.keys.keys())
        if self.filesystem is None:
            return self._read_through_store(columns, chosen)
        # Pre-buffering coalesces a file's column reads into one request: S3 wants it, a folder pays for it.
        local = isinstance(self.filesystem, pa_fs.LocalFileSystem)
        options = ds.ParquetFragmentScanOptions(pre_buffer=not local)
        parquet = ds.ParquetFileFormat(default_fragment_scan_options=options)
        fragments = [
            parquet.make_fragment(self._path(shard), self.filesystem, file_size=self.sizes[shard])
            for shard in chosen
        ]
        dataset = ds.FileSystemDataset(fragments, self.schema, parquet, self.filesystem)
        scanner = dataset.scanner(columns=columns, use_threads=True, fragment_readahead=READ_AHEAD)
        try:
            return scanner.to_table().combine_chunks()  # one chunk per file otherwise: slow kernels
        except (pa.ArrowException, OSError) as error:
            raise OutputError(f"cannot read the shard parquets of {self.store.uri}: {error}") from None

    def _path(self, shard: int) -> str:
        return f"{self.root}/{self.keys[shard]}"

    def _sample_schema(self, first_shards: Iterable[int]) -> pa.Schema:
        shards = sorted(self.keys)
        step = max(1, len(shards) // SCHEMA_SAMPLE)
        sample = set(shards[::step]) | {shards[-1]}
        sample |= {next((s for s in shards if s >= first), shards[-1]) for first in first_shards}
        schemas = [self._footer(shard) for shard in sorted(sample)]
        return pa.unify_schemas(schemas, promote_options="permissive")

    def _footer(self, shard: int) -> pa.Schema:
        key = self.keys[shard]
        try:
            if self.filesystem is None:
                return pq.read_schema(pa.BufferReader(self.store.get_bytes(key)))
            return pq.read_schema(self._path(shard), filesystem=self.filesystem)
        except (pa.ArrowException, OSError) as error:
            raise OutputError(f"{self.store.url(key)} is not a readable parquet file: {error}") from None

    def _read_through_store(self, columns, chosen: list[int]) -> pa.Table:
        from pipeline.output.shard_tables import iter_shard_tables

        markers = {shard: _Files(self.keys[shard]) for shard in chosen}
        tables = [_conform(table, self.schema) for _, table, _ in iter_shard_tables(self.store, markers)]
        return ds.InMemoryDataset(tables, schema=self.schema).to_table(columns=columns).combine_chunks()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the columns of `schema` (null where it has none), as a dataset scan reads it."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.table(columns, schema=schema)


class _Files:
    """What iter_shard_tables needs of a marker: its files (only the parquet key matters)."""

    def __init__(self, key: str):
        self.files = {key: None}
