"""A run's plan: the manifest read and planned into shards, the run record (run.json) that identifies
the run, and plan.parquet in the output."""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timezone

from pipeline.output.run_record import RUN_FORMAT
from pipeline.run.preflight import check_caption, check_quota
from pipeline.run_config import RunConfig
from pipeline.storage.layout import PLAN_KEY
from pipeline.versions import run_versions

log = logging.getLogger("stylegen.driver")


# A manifest of this many rows or more is planned through disk (manifests/plan_stream.py).
STREAM_ROWS = 1 << 20


def plan_run(manifest: str, config: RunConfig):
    """Read and plan the manifest; the run record (run.json) that identifies this run. A big Parquet
    manifest is planned by streaming (the same plan.parquet, in bounded memory: the driver keeps the
    plan's counts and its file, not its rows); a small one in memory, which is faster."""
    from manifests.plan import make_plan
    from manifests.plan_stream import stream_plan
    from manifests.read import manifest_rows, read_manifest

    options = {"order": config.plan_order, "dedupe": config.dedupe}
    if (manifest_rows(manifest) or 0) >= STREAM_ROWS:
        plan = stream_plan(manifest, config.shard_size, **options)
        schema, rows = plan.schema, plan.manifest_rows
    else:
        table = read_manifest(manifest)
        plan = make_plan(table, config.shard_size, **options)
        schema, rows = table.schema, table.num_rows
    check_caption(config, schema.names)
    check_quota(config, schema)
    if plan.dropped_rows:
        log.warning(
            "dedupe: dropped %d duplicate rows: %s", len(plan.dropped_rows), list(plan.dropped_rows)[:20]
        )
    record = {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": {"uri": manifest, "fingerprint": plan.manifest_fingerprint, "rows": rows},
        "plan": {
            "fingerprint": plan.fingerprint,
            "shards": plan.num_shards,
            "shard_size": config.shard_size,
            "order": config.plan_order,
            "dropped_rows": len(plan.dropped_rows),
        },
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "versions": run_versions(),
    }
    return plan, record


def write_plan(store, plan) -> None:
    """plan.parquet into the output: a streamed plan's file as it is, an in-memory plan written first."""
    from manifests.plan_stream import StreamedPlan

    if isinstance(plan, StreamedPlan):
        store.put_file(PLAN_KEY, plan.path)
        return
    with tempfile.TemporaryDirectory(prefix="stylegen-plan-") as folder:
        store.put_file(PLAN_KEY, plan.write(folder))
