"""The per-shard Parquet table: one row per planned row of the shard, whatever became of it.

Columns, in this order:
  uid (string), shard_id (int64), status (string: kept / rejected / failed), reason (string or null:
  the filter rule and value for rejected rows, the error for failed ones),
  score_<name> (float64, null when absent) for every score seen in the shard or named by `schema`,
  time_<name> (float64 seconds, null when absent) for every timing seen in the shard or named by `schema`,
  embedding_<name> (list<halffloat>, null when absent) for every per-sample embedding (near-duplicate
  search: `stylegen dedup`), float16 to keep it compact (1.5 KB per sample for a 768-dim embedding),
  then every metadata key (sorted): scalars as their own column, lists/dicts as canonical JSON strings.
A run passes one `schema` for all its shards, so every shard parquet has the same columns and types (an
all-failed shard has no scores, an all-null column no type of its own) and readers can concatenate them.
Rows are sorted by uid, so the same rows give the same bytes (pyarrow writes no timestamps).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.columns import EMBEDDING_PREFIX, SCORE_PREFIX, TIME_PREFIX
from pipeline.shards.keys import sample_json, validate_uid

ROW_STATUSES = ("kept", "rejected", "failed")
_CORE_COLUMNS = ("uid", "shard_id", "status", "reason")
EMBEDDING_TYPE = pa.list_(pa.float16())


@dataclass(frozen=True)
class ShardRow:
    uid: str
    status: str  # one of ROW_STATUSES
    reason: str | None = None  # required for rejected ("clip_t >= 0.25: 0.18") and failed (the error)
    scores: Mapping[str, float | None] = field(default_factory=dict)
    timings: Mapping[str, float | None] = field(default_factory=dict)  # seconds
    meta: Mapping[str, Any] = field(default_factory=dict)
    embeddings: Mapping[str, Any] = field(default_factory=dict)  # name -> 1-d float vector or None

    def __post_init__(self) -> None:
        validate_uid(self.uid)
        if self.status not in ROW_STATUSES:
            raise ValueError(f"row {self.uid}: status {self.status!r} is not one of {ROW_STATUSES}")
        if self.status != "kept" and not self.reason:
            raise ValueError(f"row {self.uid}: a {self.status} row needs a reason (the filter or the error)")


class TableStats(NamedTuple):
    rows: int
    kept: int
    rejected: int
    failed: int

    def counts(self) -> dict[str, int]:
        return {"rows": self.rows, "kept": self.kept, "rejected": self.rejected, "failed": self.failed}


def _meta_value(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        value = value.tolist()
    if isinstance(value, Mapping | list | tuple):
        return sample_json(value).decode("utf-8")
    return value


def _float_column(rows: list[ShardRow], attribute: str, name: str) -> pa.Array:
    values = []
    for row in rows:
        value = getattr(row, attribute).get(name)
        try:
            values.append(None if value is None else float(value))
        except (TypeError, ValueError):
            raise ValueError(f"row {row.uid}: {attribute[:-1]} {name!r} is not a number: {value!r}") from None
    return pa.array(values, type=pa.float64())


def _embedding_column(rows: list[ShardRow], name: str) -> pa.Array:
    """One list<halffloat> column: each row's vector (any float dtype, stored as float16) or null."""
    import numpy as np

    vectors, offsets, valid = [], [0], []
    for row in rows:
        value = row.embeddings.get(name)
        vector = None if value is None else np.asarray(value, dtype=np.float16)
        if vector is not None and vector.ndim != 1:
            raise ValueError(f"row {row.uid}: embedding {name!r} must be a vector, got shape {vector.shape}")
        if vector is not None:
            vectors.append(vector)
        offsets.append(offsets[-1] + (0 if vector is None else len(vector)))
        valid.append(vector is not None)
    flat = np.concatenate(vectors) if vectors else np.zeros(0, np.float16)
    mask = pa.array([not ok for ok in valid], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat), mask=mask)


def _meta_column(rows: list[ShardRow], name: str, shard_id: int, schema: pa.Schema | None) -> pa.Array:
    values = [_meta_value(row.meta.get(name)) for row in rows]
    target = schema.field(name).type if schema is not None and name in schema.names else None
    try:
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
        raise ValueError(f"shard {shard_id}: metadata column {name!r} cannot be stored: {error}") from None


def build_shard_table(rows: Iterable[ShardRow], shard_id: int, schema: pa.Schema | None = None) -> pa.Table:
    """The Arrow table `write_shard_table` writes (see the module docstring for its columns).

    `schema` optionally fixes the run's columns: its metadata, score_* and time_* fields appear in every
    shard (null where a row has no value) with the given metadata types."""
    ordered = sorted(rows, key=lambda row: row.uid)
    for previous, row in pairwise(ordered):
        if previous.uid == row.uid:
            raise ValueError(f"shard {shard_id}: row uid {row.uid} appears twice")
    fixed = [n for n in (schema.names if schema is not None else []) if n not in _CORE_COLUMNS]
    scored = {n.removeprefix(SCORE_PREFIX) for n in fixed if n.startswith(SCORE_PREFIX)}
    timed = {n.removeprefix(TIME_PREFIX) for n in fixed if n.startswith(TIME_PREFIX)}
    embedded = {n.removeprefix(EMBEDDING_PREFIX) for n in fixed if n.startswith(EMBEDDING_PREFIX)}
    described = {n for n in fixed if not n.startswith((SCORE_PREFIX, TIME_PREFIX, EMBEDDING_PREFIX))}
    meta_names = sorted({name for row in ordered for name in row.meta} | described)
    score_names = sorted({name for row in ordered for name in row.scores} | scored)
    timing_names = sorted({name for row in ordered for name in row.timings} | timed)
    embedding_names = sorted({name for row in ordered for name in row.embeddings} | embedded)
    clashes = set(meta_names) & (
        set(_CORE_COLUMNS)
        | {f"{SCORE_PREFIX}{n}" for n in score_names}
        | {f"{TIME_PREFIX}{n}" for n in timing_names}
        | {f"{EMBEDDING_PREFIX}{n}" for n in embedding_names}
    )
    if clashes:
        raise ValueError(f"shard {shard_id}: metadata keys {sorted(clashes)} clash with table columns")

    columns: dict[str, pa.Array] = {
        "uid": pa.array([row.uid for row in ordered], type=pa.string()),
        "shard_id": pa.array([shard_id] * len(ordered), type=pa.int64()),
        "status": pa.array([row.status for row in ordered], type=pa.string()),
        "reason": pa.array([row.reason for row in ordered], type=pa.string()),
    }
    for name in score_names:
        columns[f"score_{name}"] = _float_column(ordered, "scores", name)
    for name in timing_names:
        columns[f"time_{name}"] = _float_column(ordered, "timings", name)
    for name in embedding_names:
        columns[f"{EMBEDDING_PREFIX}{name}"] = _embedding_column(ordered, name)
    for name in meta_names:
        columns[name] = _meta_column(ordered, name, shard_id, schema)
    return pa.table(columns)


def write_shard_table(
    rows: Iterable[ShardRow], path: str | Path, shard_id: int, schema: pa.Schema | None = None
) -> TableStats:
    """Write the shard's Parquet table at `path` (temp file + fsync + rename) and count its statuses."""
    table = build_shard_table(rows, shard_id, schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(table, temp)
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    counts = Counter(table.column("status").to_pylist())
    return TableStats(table.num_rows, counts["kept"], counts["rejected"], counts["failed"])
