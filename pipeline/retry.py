"""`stylegen run MANIFEST --output OUT --retry-failed`: regenerate the failed rows of a finished run.

The rows whose newest result is `failed` are planned into new shards after the run's, as a generation of
the run marked `retry` (the mechanism of --append, pipeline/append.py), so committed shards stay as they
are and the new shards run, commit and resume like any other. A uid's newest result (the one in the
highest shard id) is its result, so each row counts once: `retried_rows` is what status and the run
summary take off the failed count (every row of a retry shard replaced exactly one failed row), and the
report keeps only each uid's newest row (`newest_rows`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.append import add_generation, generations, stored_plan


def retry_shards(record: dict[str, Any]) -> set[int]:
    """The shard ids of the run's retry generations."""
    found: set[int] = set()
    for generation in generations(record):
        if generation.get("retry"):
            found.update(range(generation["first_shard"], generation["first_shard"] + generation["shards"]))
    return found


def retried_rows(record: dict[str, Any], markers: dict[int, Any]) -> int:
    """Rows of committed retry shards: each replaced one failed row counted in an older shard."""
    return sum(int(markers[s].summary.get("rows", 0)) for s in retry_shards(record) if s in markers)


def newest_rows(rows: pa.Table) -> pa.Table:
    """Each uid's row from its highest shard id (its newest result); the table itself without repeats."""
    if rows.num_rows == 0 or pc.count_distinct(rows.column("uid")).as_py() == rows.num_rows:
        return rows
    newest = rows.group_by("uid").aggregate([("shard_id", "max")])
    key = lambda uids, shards: pc.binary_join_element_wise(uids, pc.cast(shards, pa.string()), "#")  # noqa: E731
    wanted = key(newest.column("uid"), newest.column("shard_id_max"))
    return rows.filter(pc.is_in(key(rows.column("uid"), rows.column("shard_id")), value_set=wanted))


def failed_uids(store, markers: dict[int, Any]) -> set[str]:
    """The uids whose newest committed result is `failed`."""
    from pipeline.select import read_shard_tables

    rows, _ = read_shard_tables(store, markers, keep=lambda name: name in ("uid", "shard_id", "status"))
    rows = newest_rows(rows)
    return set(rows.filter(pc.equal(rows.column("status"), "failed")).column("uid").to_pylist())


def plan_retry(store, prior: dict[str, Any], failed: set[str]) -> dict[str, Any]:
    """Plan the `failed` rows (as the plan holds them, in its order) into new shards after the run's;
    write plan.parquet, then run.json (the commit point). Returns the new run record."""
    old, schema = stored_plan(store, prior)
    again = old.filter(pc.is_in(old.column("uid"), value_set=pa.array(sorted(failed), pa.string())))
    again = newest_rows(again)  # a row retried before appears once per try: plan it once
    again = again.sort_by([("shard_id", "ascending"), ("row", "ascending")])
    latest = generations(prior)[-1]
    generation = {
        "manifest": latest["manifest"],
        "plan_fingerprint": latest["plan_fingerprint"],  # the manifest's plan: a plain rerun resumes
        "retry": True,
    }
    return add_generation(store, prior, old, schema, again, generation, latest["shard_size"])
