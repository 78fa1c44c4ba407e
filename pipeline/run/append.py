"""`stylegen run BIGGER_MANIFEST --output EXISTING --append`: grow a run without redoing it.

A run's shards are planned in *generations*: the first run plans its manifest into shards 0..n-1; each
append plans only the rows the run does not have yet into new shards after the last one (in the plan's
order, with the run's shard size). Committed shards, and the plan rows of shards not yet run, stay as
they are, so a sample's shard never changes. plan.parquet holds every generation's rows (its metadata's
num_shards is the total) and run.json lists the generations (`generations`: manifest, plan fingerprint,
first shard, shards, rows), with `manifest` the latest one: a plain rerun with the latest manifest
resumes, and status, select and report see one dataset. A run.json without `generations` has one, the
whole plan.

The new manifest must hold every row of the run unchanged: a row dropped (its uid is missing) or changed
(same uid, another id or extra value, or another set of columns) is refused, naming the rows. The config
must be the same, as for a resume.

The same mechanism, "more shards after the plan", serves anything that adds rows to a run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.plan import METADATA_KEY, ROW_GROUP_TARGET_ROWS
from manifests.schema import ORIGIN_UID, QUOTA_COLUMNS
from pipeline.errors import UserError
from pipeline.output.run_record import generations, shard_sizes, store_run_record
from pipeline.output.shard_tables import newest_rows
from pipeline.storage.layout import PLAN_KEY

SHOWN = 5  # rows named in a refusal


class AppendRefused(UserError, RuntimeError):
    """The new manifest drops or changes rows of the run; the message names them."""

    exit_code = 2


def append_run(store, prior: dict[str, Any], plan, record: dict[str, Any]) -> dict[str, Any]:
    """Plan `plan`'s new rows (the fresh plan of the bigger manifest) after the run's shards; write
    plan.parquet, then run.json (the commit point: a crash before it leaves run.json as it was, and the
    append can be redone). Returns the new run record. Raises AppendRefused naming dropped/changed rows."""
    old, schema = stored_plan(store, prior)
    fresh = plan.table
    check_contains(manifest_rows(old), fresh, prior["manifest"]["uri"], record["manifest"]["uri"])
    new = fresh.filter(pa.array(find_sorted(fresh.column("uid"), old.column("uid")) < 0))  # in plan order
    generation = {"manifest": record["manifest"], "plan_fingerprint": record["plan"]["fingerprint"]}
    return add_generation(store, prior, old, schema, new, generation, plan.shard_size)


def manifest_rows(plan: pa.Table) -> pa.Table:
    """The plan's rows that come from a manifest: without a quota's reseeded rows and their columns."""
    if ORIGIN_UID not in plan.column_names:
        return plan
    return plan.filter(pc.is_null(plan.column(ORIGIN_UID))).drop_columns(list(QUOTA_COLUMNS))


def stored_plan(store, prior: dict[str, Any]) -> tuple[pa.Table, pa.Schema]:
    """The run's rows of plan.parquet (a crashed append's or retry's rows beyond the shards run.json
    records are not the run's) and the file's schema."""
    total = len(shard_sizes(prior))
    with store.open(PLAN_KEY) as handle:
        stored = pq.ParquetFile(handle)
        rows, schema = stored.read(), stored.schema_arrow
    return rows.filter(pc.less(rows.column("shard_id"), total)), schema


def add_generation(
    store,
    prior: dict[str, Any],
    old: pa.Table,
    schema: pa.Schema,
    new: pa.Table,
    generation: dict[str, Any],
    shard_size: int,
) -> dict[str, Any]:
    """Give `new` (plan rows, in order) shard ids after the run's, record it as a generation
    (`generation` holds its manifest and plan fingerprint, and any marks such as `retry`), write
    plan.parquet and then run.json (the commit point). Returns the new run record."""
    total = len(shard_sizes(prior))
    schema, old, new = _aligned(schema, old, new)
    ids = (total + np.arange(new.num_rows) // shard_size).astype(np.int32)
    new = new.set_column(0, schema.field("shard_id"), pa.array(ids, schema.field("shard_id").type))
    entry = {
        **generation,
        "first_shard": total,
        "shards": -(-new.num_rows // shard_size),
        "rows": new.num_rows,
        "shard_size": shard_size,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    history = [*generations(prior), entry]
    parts = [[g["plan_fingerprint"], g["first_shard"], g["rows"], bool(g.get("retry"))] for g in history]
    combined = hashlib.sha256(b"stylegen-generations-v1" + json.dumps(parts).encode()).hexdigest()
    shards = total + entry["shards"]
    updated = {
        **prior,
        "manifest": entry["manifest"],
        "plan": {**prior["plan"], "fingerprint": combined, "shards": shards},
        "generations": history,
    }
    info = {
        **json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}")),
        "fingerprint": combined,
        "num_rows": old.num_rows + new.num_rows,
        "num_shards": shards,
        "generations": len(history),
    }
    write_plan(store, old, new, schema, info, shard_size)
    store_run_record(store, updated)
    return updated


def _aligned(schema: pa.Schema, old: pa.Table, new: pa.Table) -> tuple[pa.Schema, pa.Table, pa.Table]:
    """One schema for the old and the new rows: columns only the new rows have (a quota's origin) are
    added to the old ones as nulls, and the other way round (an append to a reseeded run)."""
    for column in new.schema:
        if column.name not in schema.names:
            schema = schema.append(column)
            old = old.append_column(column, pa.nulls(old.num_rows, column.type))
    for column in schema:
        if column.name not in new.column_names:
            new = new.append_column(column, pa.nulls(new.num_rows, column.type))
    return schema, old, new.select(schema.names)


def check_contains(old: pa.Table, fresh: pa.Table, old_uri: str, new_uri: str) -> None:
    """Refuse a new plan that lacks a row of the old one, or holds it with other values."""
    old = newest_rows(old)  # a row retried by --retry-failed is in the plan once per try, the same row
    columns = [name for name in old.column_names if name not in ("shard_id", "row")]
    old_columns = {f.name: f.type for f in old.schema if f.name in columns}
    new_columns = {f.name: f.type for f in fresh.schema if f.name not in ("shard_id", "row")}
    if old_columns != new_columns:
        differ = sorted(
            f"{name} ({old_columns.get(name, 'absent')} -> {new_columns.get(name, 'absent')})"
            for name in old_columns.keys() | new_columns.keys()
            if old_columns.get(name) != new_columns.get(name)
        )
        raise AppendRefused(
            f"--append: {new_uri} has other columns than the run's manifest {old_uri}: {', '.join(differ)}; "
            "every row must stay as it was"
        )
    found = find_sorted(old.column("uid"), fresh.column("uid"))  # old row -> its fresh row, -1: absent
    dropped = old.filter(pa.array(found < 0))
    problems = []
    if dropped.num_rows:
        shown = "; ".join(
            f"uid {row['uid']} (row {row['row']}, prompt {row['prompt']!r})"
            for row in dropped.slice(0, SHOWN).to_pylist()
        )
        problems.append(f"{dropped.num_rows} row(s) of the run are missing: {shown}")
    kept_old = old.filter(pa.array(found >= 0))
    same_new = fresh.take(pa.array(found[found >= 0]))
    changed: dict[str, list[str]] = {}
    for name in columns:
        for index in np.flatnonzero(~_equal(kept_old.column(name), same_new.column(name))):
            changed.setdefault(kept_old.column("uid")[int(index)].as_py(), []).append(name)
    if changed:
        shown_uids = sorted(changed)[:SHOWN]
        shown_rows = same_new.filter(pc.is_in(same_new.column("uid"), value_set=pa.array(shown_uids)))
        rows = dict(
            zip(shown_rows.column("uid").to_pylist(), shown_rows.column("row").to_pylist(), strict=True)
        )
        shown = "; ".join(f"uid {uid} (row {rows[uid]}: {', '.join(changed[uid])})" for uid in shown_uids)
        problems.append(f"{len(changed)} row(s) of the run changed: {shown}")
    if problems:
        raise AppendRefused(
            f"--append: {new_uri} must contain every row of the run's manifest {old_uri} unchanged, but "
            + " and ".join(problems)
            + ". Append with a manifest that keeps every old row, or start another output."
        )


def find_sorted(wanted: pa.ChunkedArray, among: pa.ChunkedArray) -> np.ndarray:
    """For each uid of `wanted`, its position in `among` (uids, each once), or -1: a merge of the two
    sorted by uid (binary searches over fixed-width bytes), not a set of strings."""
    order = pc.sort_indices(among).to_numpy().astype(np.int64)
    sorted_among = _uid_bytes(among.take(pa.array(order)))
    keys = _uid_bytes(wanted)
    at = np.searchsorted(sorted_among, keys)
    hit = at < len(sorted_among)
    hit[hit] = sorted_among[at[hit]] == keys[hit]
    return np.where(hit, order[np.minimum(at, len(order) - 1)], -1) if len(order) else np.full(len(keys), -1)


def _uid_bytes(uids: pa.ChunkedArray) -> np.ndarray:
    """Uids as numpy fixed-width bytes, ordered as Arrow orders the strings (32 hex digits each: a view
    of the Arrow buffer, no Python string per uid)."""
    array = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    array = array.cast(pa.string())
    lengths = pc.binary_length(array)
    width = max(pc.max(lengths).as_py() or 1, 1)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    if array.null_count == 0 and pc.min(lengths).as_py() == width:
        data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        return data.view(f"S{width}")
    return np.array([uid.encode() for uid in array.to_pylist()], dtype=f"S{width}")


def _equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    """Element-wise equality with null == null."""
    if pa.types.is_nested(a.type):
        return np.array([x == y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)], dtype=bool)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    same = pc.fill_null(pc.equal(a, b), False)
    return pc.or_(same, both_null).to_numpy(zero_copy_only=False).astype(bool)


def write_plan(store, old: pa.Table, new: pa.Table, schema: pa.Schema, info: dict, shard_size: int) -> None:
    """plan.parquet with the old rows as they were, then the new ones; row groups of whole shards."""
    schema = schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: json.dumps(info, sort_keys=True)})
    with tempfile.TemporaryDirectory(prefix="stylegen-append-") as folder:
        path = Path(folder) / PLAN_KEY
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for part in (old, new.cast(schema)):
                if part.num_rows:
                    group = shard_size * max(1, ROW_GROUP_TARGET_ROWS // shard_size)
                    writer.write_table(part.replace_schema_metadata(schema.metadata), row_group_size=group)
        store.put_file(PLAN_KEY, path)
