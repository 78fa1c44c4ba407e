"""What a run adds to its run.json while it runs, through pipeline.output.run_record (the one writer):
the models its workers report, described once each, and the run itself in `runs`: its log key and its
pool (target actors, GPUs per actor), so the report reads every run's pool as data
(pipeline.output.run_record: with_run_pool writes an entry, recorded_pools reads them)."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.output.run_record import store_run_record, with_run_pool
from pipeline.run.resume import read_run_record

log = logging.getLogger("stylegen.driver")


def record_models(store, models: dict[str, Any], known: set[str]) -> None:
    """Add the models a worker reports ({fingerprint: description}) to run.json's `models`, once each:
    the samples carry only the fingerprint."""
    new = {fingerprint: info for fingerprint, info in models.items() if fingerprint not in known}
    if not new:
        return
    record = read_run_record(store) or {}
    record["models"] = {**(record.get("models") or {}), **new}
    store_run_record(store, record)
    known.update(new)


def record_pool(store, log_key: str, actors: int, gpus_per_actor: float) -> None:
    """Add this run (its log key, its pool's target size and GPUs per actor) to run.json's `runs`, once
    its pool is sized. Like the report it feeds, a failure here is a warning, not a failed run."""
    try:
        record = read_run_record(store) or {}
        store_run_record(store, with_run_pool(record, log_key, actors, gpus_per_actor))
    except Exception as error:  # noqa: BLE001 - the report then shows no pool size for this run
        log.warning("run.json: this run's pool not recorded (%s: %s)", type(error).__name__, error)
