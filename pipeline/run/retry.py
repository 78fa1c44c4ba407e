"""`stylegen run MANIFEST --output OUT --retry-failed`: regenerate the failed rows of a finished run.

The rows whose newest result is `failed` are planned into new shards after the run's, as a generation of
the run marked `retry` (the mechanism of --append, pipeline/run/append.py), so committed shards stay as they
are and the new shards run, commit and resume like any other. A uid's newest result (the one in the
highest shard id) is its result, so each row counts once (pipeline/output/accounting.py takes the rows
of retry shards off the failed count; the report keeps only each uid's newest row).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.output.run_record import generations
from pipeline.output.shard_tables import newest_rows
from pipeline.run.append import add_generation, stored_plan


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
