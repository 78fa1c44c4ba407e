"""`stylegen dedup OUTPUT --by dino --threshold T [--within style|prompt] [--prefer SCORE] -o NEW_OUTPUT`.

Keeps one sample of every group of near-duplicates among a finished run's kept samples and writes
them to fresh shards like `stylegen select` (pipeline.dataset.subset: the same writer, run.json record,
resume and refusals):

1. Stream the committed shard parquets' `embedding_<by>` column (float16 vectors, written by the
   `<by>_embedding` scorer) into one float16 matrix, kept in a temporary memory-mapped file once it
   outgrows `memory_limit`, plus the few metadata columns the choice needs.
2. Group: cosine >= T links two samples, transitively (pipeline.scoring.duplicates: exact, blockwise
   matrix products, union-find); with `--within`, only samples of the same style (or prompt) are compared.
3. Keep one sample per group: the highest `--prefer` score (e.g. aesthetic), else the smallest uid;
   ties by uid. A kept sample without an embedding cannot be compared and is kept as it is.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.columns import EMBEDDING_PREFIX, SCORE_PREFIX
from pipeline.dataset.subset import SelectError, SelectSummary
from pipeline.output.shard_tables import iter_shard_tables

MEMORY_LIMIT = 1 << 30  # bytes of embeddings kept in RAM; above, a temporary memory-mapped file


@dataclass(frozen=True)
class Dedup:
    by: str  # the embedding: `dino` reads the `embedding_dino` column
    threshold: float
    within: str | None = None  # style | prompt
    prefer: str | None = None  # keep the highest-scoring member of each group by this score

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise SelectError(f"--threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.within not in (None, "style", "prompt"):
            raise SelectError(f"--within must be style or prompt, got {self.within!r}")

    @property
    def column(self) -> str:
        return EMBEDDING_PREFIX + self.by.removeprefix(EMBEDDING_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        dedup = {"by": self.column.removeprefix(EMBEDDING_PREFIX), "threshold": self.threshold}
        return {"dedup": {**dedup, "within": self.within, "prefer": self.prefer}}


@dataclass
class DedupSummary(SelectSummary):
    groups: int = 0  # groups of two or more near-duplicates
    removed: int = 0  # samples left out (every group member but one)
    without_embedding: int = 0  # kept samples that have no embedding (kept as they are)


def dedup_output(
    source: str,
    output: str,
    dedup: Dedup,
    *,
    shard_size: int | None = None,
    allow_partial: bool = False,
    workers: int = 4,
    block: int = 4096,
    memory_limit: int = MEMORY_LIMIT,
    storage: dict[str, Any] | None = None,
    lease=None,
) -> DedupSummary:
    """Write one sample per near-duplicate group of `source`'s kept samples to `output` (`storage`:
    open_store options for the s3:// one(s)). `lease(output_store)`: a context manager held while writing
    (pipeline.dataset.subset.write_subset)."""
    from pipeline.dataset.subset import open_source, write_subset
    from pipeline.scoring.duplicates import duplicate_groups

    source_store, output_store, source_run, markers = open_source(source, output, allow_partial, storage)
    with tempfile.TemporaryDirectory(prefix="stylegen-dedup-") as scratch:
        rows, vectors, schema = read_embeddings(source_store, markers, dedup, Path(scratch), memory_limit)
        has_vector = rows.column("has_vector").to_numpy(zero_copy_only=False)  # the others: zeros, alone
        partition = _partition_keys(rows, dedup.within) if dedup.within else None
        labels = duplicate_groups(vectors, dedup.threshold, partition=partition, block=block)
        del vectors  # closes the memory map before the folder goes
    chosen, groups = _representatives(rows, labels, dedup.prefer)
    summary = write_subset(
        source_store,
        output_store,
        source_run,
        markers,
        rows.select(["uid", "shard_id"]),
        schema,
        chosen,
        dedup.to_dict(),
        shard_size=shard_size,
        workers=workers,
        lease=lease,
    )
    return DedupSummary(
        **summary.to_dict(),
        groups=groups,
        removed=rows.num_rows - len(chosen),
        without_embedding=int((~has_vector).sum()),
    )


def read_embeddings(store, markers: dict, dedup: Dedup, scratch: Path, memory_limit: int, threads: int = 8):
    """(kept rows: uid, shard_id, has_vector, partition and prefer columns; (rows, D) float16 vectors;
    the source's unified schema), shard by shard, so only one shard's column is decoded at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.storage.layout import table_key_of

    wanted = {"uid", "shard_id", "status", dedup.column}
    wanted |= {dedup.within} if dedup.within else set()
    wanted |= {SCORE_PREFIX + dedup.prefer.removeprefix(SCORE_PREFIX)} if dedup.prefer else set()

    def kept(shard_id: int, table, schema):
        missing = sorted(wanted - set(schema.names))
        if missing:
            key = table_key_of(shard_id, markers[shard_id].files)
            raise SelectError(f"{store.url(key)} has no column {missing[0]!r}{_hint(missing[0], schema)}")
        return table.filter(pc.equal(table.column("status"), "kept")), schema

    ids = sorted(markers)
    total = sum(int((markers[i].summary or {}).get("kept", 0)) for i in ids)
    metadata, schemas = [], []
    vectors = None
    filled = 0
    shards = iter_shard_tables(store, markers, keep=wanted.__contains__, threads=threads)
    for table, schema in itertools.starmap(kept, shards):  # in shard order, a few read ahead
        column = table.column(dedup.column)
        width = _width(column)
        if vectors is None and width:
            vectors = _matrix(max(total, table.num_rows), width, scratch, memory_limit)
        if width and vectors.shape[1] != width:
            raise SelectError(f"{dedup.column} has {width} dims in one shard, {vectors.shape[1]} in another")
        if vectors is not None and filled + table.num_rows > len(vectors):  # markers undercounted
            vectors = _grow(vectors, filled + table.num_rows, scratch)
        if table.num_rows and vectors is not None:
            vectors[filled : filled + table.num_rows] = _dense(column, vectors.shape[1])
        filled += table.num_rows
        valid = pc.invert(pc.is_null(column)) if table.num_rows else pa.array([], pa.bool_())
        metadata.append(table.drop_columns([dedup.column, "status"]).append_column("has_vector", valid))
        schemas.append(schema)
    if not metadata:
        raise SelectError(f"{store.uri} has no committed shards to deduplicate")
    rows = pa.concat_tables(metadata, promote_options="permissive")
    if vectors is None:
        raise SelectError(
            f"{store.uri}: no kept sample has an {dedup.column} value; was the "
            f"{dedup.column.removeprefix(EMBEDDING_PREFIX)}_embedding scorer enabled (scoring.scorers)?"
        )
    return rows, vectors[:filled], pa.unify_schemas(schemas, promote_options="permissive")


def _hint(column: str, schema) -> str:
    if not column.startswith(EMBEDDING_PREFIX):
        return ""
    present = [
        name.removeprefix(EMBEDDING_PREFIX) for name in schema.names if name.startswith(EMBEDDING_PREFIX)
    ]
    return f"; embeddings there: {', '.join(present) or 'none'} (enable the <name>_embedding scorer)"


def _width(column) -> int:
    import pyarrow.compute as pc

    lengths = pc.list_value_length(column).drop_null() if len(column) else None
    if lengths is None or not len(lengths):
        return 0
    low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
    if low != high:
        raise SelectError(f"embeddings of different lengths ({low} and {high}) in one shard")
    return int(low)


def _dense(column, width: int) -> np.ndarray:
    """(rows, width) float16; rows without a vector are zeros (no direction: never grouped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    filled = pc.fill_null(array, pa.scalar([0.0] * width, array.type))
    return pc.list_flatten(filled).to_numpy(zero_copy_only=False).astype(np.float16).reshape(-1, width)


def _matrix(rows: int, width: int, scratch: Path, memory_limit: int) -> np.ndarray:
    if rows * width * 2 <= memory_limit:
        return np.zeros((rows, width), np.float16)
    return np.lib.format.open_memmap(scratch / "vectors.npy", "w+", np.float16, (rows, width))


def _grow(vectors: np.ndarray, rows: int, scratch: Path) -> np.ndarray:
    if not isinstance(vectors, np.memmap):
        return np.concatenate([vectors, np.zeros((rows - len(vectors), vectors.shape[1]), np.float16)])
    grown = np.lib.format.open_memmap(
        scratch / f"vectors-{rows}.npy", "w+", np.float16, (rows, vectors.shape[1])
    )
    grown[: len(vectors)] = vectors
    return grown


def _partition_keys(rows, within: str) -> np.ndarray:
    """A dense integer per distinct style (or prompt) value."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(rows.column(within)).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False)


def _representatives(rows, labels: np.ndarray, prefer: str | None) -> tuple[list[str], int]:
    """One uid per label: the highest `prefer` score (missing: lowest), then the smallest uid; and the
    number of labels with two or more members."""
    import pyarrow.compute as pc

    uids = rows.column("uid")
    uid_rank = np.empty(len(labels), np.int64)
    uid_rank[pc.sort_indices(uids).to_numpy()] = np.arange(len(labels))
    if prefer:
        column = rows.column(SCORE_PREFIX + prefer.removeprefix(SCORE_PREFIX))
        scores = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        scores = np.where(np.isfinite(scores), scores, -np.inf)
    else:
        scores = np.zeros(len(labels))
    order = np.lexsort((uid_rank, -scores, labels))  # by label, then best score, then uid
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    sizes = np.diff(np.append(np.flatnonzero(first), len(order)))
    chosen = uids.take(order[first]).to_pylist()
    return chosen, int((sizes > 1).sum())
