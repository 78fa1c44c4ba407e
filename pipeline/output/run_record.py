"""run.json, the run record: its one reader, its one writer, and the generations it plans.

A run's shards are planned in generations (the first run, then each --append or --retry-failed adds
shards after the last): `generations` and `shard_sizes` read them from any record, old or new.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.errors import OutputError, UserError
from pipeline.json_format import pretty_json
from pipeline.storage.layout import RUN_KEY, SUMMARY_KEY
from pipeline.storage.objects import ObjectNotFound

RUN_FORMAT = "stylegen-run/2"  # 2: shard parquets under metadata/, models in run.json, captions
READABLE_FORMATS = (RUN_FORMAT, "stylegen-run/1")  # a format-1 output resumes in its own layout


class RunRecordError(UserError, ValueError):
    """run.json exists but is not a JSON object (the message names it and says why)."""

    exit_code = 2


def load_run_record(store) -> dict[str, Any] | None:
    """The output's run.json as a dict, None when there is none; RunRecordError when it is not valid
    JSON or not a JSON object. Callers that tolerate a damaged record catch RunRecordError themselves."""
    try:
        data = store.get_bytes(RUN_KEY)
    except ObjectNotFound:
        return None
    where = store.url(RUN_KEY)
    try:
        record = json.loads(data)
    except ValueError as error:  # also bad UTF-8
        raise RunRecordError(f"{where} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise RunRecordError(f"{where} holds a JSON {type(record).__name__}, not a run record")
    return record


def store_run_record(store, record: dict[str, Any]) -> None:
    """Write run.json (whole: readers see the old record or the new one)."""
    store.put_bytes(RUN_KEY, pretty_json(record))


def require_stylegen_output(store, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output's run.json (`record`, read when not given), when it is one stylegen wrote (a run's or a
    selection's); else OutputError, before a command writes anything into the output (card, report,
    --rebuild-ledger)."""
    record = load_run_record(store) if record is None else record
    if record is None:
        raise OutputError(f"no stylegen output at {store.uri} (no {RUN_KEY}); nothing was written into it")
    if not str(record.get("format", "")).startswith(("stylegen-run/", "stylegen-select/")):
        raise OutputError(
            f"{store.url(RUN_KEY)} is not a stylegen run record: {store.uri} is not a stylegen output, "
            "and nothing was written into it"
        )
    return record


def is_run_record(record: Any) -> bool:
    """Whether `record` is a run.json that `stylegen run` wrote (its format and its fields)."""
    if not isinstance(record, dict) or record.get("format") not in READABLE_FORMATS:
        return False
    manifest, plan = record.get("manifest"), record.get("plan")
    return (
        isinstance(manifest, dict)
        and {"fingerprint", "rows"} <= manifest.keys()
        and isinstance(plan, dict)
        and {"fingerprint", "shards"} <= plan.keys()
        and isinstance(record.get("config"), dict)
        and isinstance(record.get("config_fingerprint"), str)
    )


def generations(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's generations, oldest first (one, the whole plan, for a run never appended)."""
    if record.get("generations"):
        return record["generations"]
    plan = record["plan"]
    return [
        {
            "manifest": record["manifest"],
            "plan_fingerprint": plan["fingerprint"],
            "first_shard": 0,
            "shards": plan["shards"],
            "rows": record["manifest"]["rows"] - plan.get("dropped_rows", 0),
            "shard_size": plan["shard_size"],
        }
    ]


def shard_sizes(record: dict[str, Any]) -> dict[int, int]:
    """shard id -> planned rows, over every generation of the run."""
    sizes = {}
    for generation in generations(record):
        full, rest = divmod(generation["rows"], generation["shard_size"])
        counts = [generation["shard_size"]] * full + ([rest] if rest else [])
        sizes.update({generation["first_shard"] + index: rows for index, rows in enumerate(counts)})
    return sizes


def retry_shards(record: dict[str, Any]) -> set[int]:
    """The shard ids of the run's retry generations (--retry-failed)."""
    found: set[int] = set()
    for generation in generations(record):
        if generation.get("retry"):
            found.update(range(generation["first_shard"], generation["first_shard"] + generation["shards"]))
    return found


def with_run_pool(record: dict[str, Any], log_key: str, actors: int, gpus_per_actor: float) -> dict[str, Any]:
    """`record` with one more entry in `runs`: a run (its log key) and its pool (target actors, GPUs per
    actor), so the report reads every run's pool as data (`recorded_pools`)."""
    earlier = record.get("runs")
    run = {"log": log_key, "actors": actors, "gpus_per_actor": gpus_per_actor}
    return {**record, "runs": [*(earlier if isinstance(earlier, list) else []), run]}


def recorded_pools(record: dict[str, Any] | None) -> dict[str, tuple[int, float]]:
    """Log key -> (target actors, GPUs per actor), from run.json's `runs` (entries that do not read as
    such, e.g. edited by hand, are left out: their runs show no pool size)."""
    pools = {}
    for run in (record or {}).get("runs") or []:
        if not isinstance(run, dict):
            continue
        key, actors, gpus = run.get("log"), run.get("actors"), run.get("gpus_per_actor")
        if isinstance(key, str) and isinstance(actors, int) and isinstance(gpus, (int, float)):
            pools[key] = (actors, float(gpus))
    return pools


def load_summary(store) -> dict[str, Any] | None:
    """The latest run's summary.json (None when missing or not a JSON object)."""
    try:
        summary = json.loads(store.get_bytes(SUMMARY_KEY))
    except (ObjectNotFound, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
