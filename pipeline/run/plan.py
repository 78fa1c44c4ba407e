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


def plan_run(manifest: str, config: RunConfig):
    """Read and plan the manifest; the run record (run.json) that identifies this run."""
    from manifests.plan import make_plan
    from manifests.read import read_manifest

    table = read_manifest(manifest)
    check_caption(config, table.column_names)
    check_quota(config, table.schema)
    plan = make_plan(table, config.shard_size, order=config.plan_order, dedupe=config.dedupe)
    if plan.dropped_rows:
        log.warning(
            "dedupe: dropped %d duplicate rows: %s", len(plan.dropped_rows), list(plan.dropped_rows)[:20]
        )
    record = {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": {"uri": manifest, "fingerprint": plan.manifest_fingerprint, "rows": table.num_rows},
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
    with tempfile.TemporaryDirectory(prefix="stylegen-plan-") as folder:
        store.put_file(PLAN_KEY, plan.write(folder))
