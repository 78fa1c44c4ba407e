"""What a shard's files hold, made from its rows' outcomes: each sample's `.json` metadata, the run's
parquet columns, and where the shard ran; plus the record of a shard that failed every attempt.

The tars hold only reproducible fields, so a rerun writes byte-identical tars; the attempt id, the
timings and where the shard ran go to the shard parquet only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from manifests.plan import read_shard
from manifests.row_settings import INTEGER_COLUMNS, WIDTH, present_columns
from manifests.schema import ORIGIN_UID, QUOTA_ROUND
from pipeline.captions import extra_columns
from pipeline.models.info import model_fingerprint, public_model_info
from pipeline.output.run_record import RunRecordError, load_run_record
from pipeline.run_config import RunConfig
from pipeline.shards.commit import ShardContents, commit_shard_files
from pipeline.shards.images import encode_image
from pipeline.shards.table import ShardRow
from pipeline.shards.tar import ShardSample
from pipeline.storage.layout import PLAN_KEY, uses_legacy_layout
from pipeline.worker.result import RanOn, RowOutcome

TIMING_NAMES = ("generate_s", "score_s")


class ShardFiles:
    """Turns a shard's outcomes into the contents of its files; also used for a shard that failed
    every attempt (all rows failed, no images)."""

    def __init__(self, config: RunConfig, model_info: dict[str, Any], ran_on: RanOn | None = None):
        self.config = config
        self.model_info = public_model_info(model_info)  # no local paths: it is published in run.json
        self.model = model_fingerprint(self.model_info)  # what each sample carries instead
        self.plan_schema: pa.Schema | None = None  # set from the plan: types of the manifest's extras
        self.ran_on = ran_on or RanOn()

    def models_record(self) -> dict[str, Any]:
        """run.json's `models` entry for this worker's models: {fingerprint: public description}."""
        return {self.model: self.model_info} if self.model else {}

    def contents(self, shard_id: int, attempt_id: str, outcomes: Sequence[RowOutcome]) -> ShardContents:
        """The shard's kept tar, its parquet (every row) and its rejected tar if the config keeps one."""
        fmt, quality = self.config.image.format, self.config.image.quality
        samples: dict[str, list[ShardSample]] = {"kept": [], "rejected": []}
        rows = []
        for outcome in outcomes:
            meta = self.sample_metadata(outcome, shard_id)
            if outcome.image is not None and outcome.status in samples:
                image = encode_image(outcome.image, fmt, quality)
                sample = ShardSample(outcome.row["uid"], image, fmt, meta, outcome.caption)
                samples[outcome.status].append(sample)
            rows.append(
                ShardRow(
                    uid=outcome.row["uid"],
                    status=outcome.status,
                    reason=outcome.reason,
                    scores=outcome.scores,
                    timings=outcome.timings,
                    meta={
                        **_table_meta(meta),
                        "caption": outcome.caption,
                        "attempt_id": attempt_id,
                        **dataclasses.asdict(self.ran_on),  # like the attempt id, in the parquet only
                    },
                    embeddings=outcome.embeddings,
                )
            )
        return ShardContents(
            kept=samples["kept"],
            rows=rows,
            schema=shard_table_schema(
                self.plan_schema, self.config.scoring.scorers, quota=self.config.quota is not None
            ),
            rejected=samples["rejected"] if self.config.keep_rejected else None,
        )

    def sample_metadata(self, outcome: RowOutcome, shard_id: int) -> dict[str, Any]:
        """The sample's `.json` member: its own fields, the preset, the model fingerprint (the models
        themselves are described once in run.json), its parameters and scores. Only reproducible fields:
        timings and the attempt go to the shard parquet, so a rerun writes byte-identical tars."""
        row = outcome.row
        return {
            **_row_settings(outcome),
            "shard_id": shard_id,
            "row": row.get("row"),
            "id": row.get("id"),
            "prompt": row["prompt"],
            "style": row["style"],
            "content": row.get("content"),
            "seed": outcome.seed,
            "manifest_seed": row.get("seed"),
            "extra": {k: row[k] for k in extra_columns(row)},
            "preset": self.config.preset,
            "model": self.model,
            "params": outcome.params,
            "scores": outcome.scores,
            "status": outcome.status,
            "filter": {"rule": outcome.rule, "value": outcome.rule_value} if outcome.rule else None,
            **(quota_fields(row) if self.config.quota is not None else {}),
        }


def quota_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A quota run's samples name the planned row they were reseeded from (None: planned) and the round."""
    return {ORIGIN_UID: row.get(ORIGIN_UID), QUOTA_ROUND: row.get(QUOTA_ROUND) or 0}


def shard_table_schema(
    plan_schema: pa.Schema | None, scorers: Sequence[str] = (), *, quota: bool = False
) -> pa.Schema:
    """The columns every shard parquet of a run has, whatever its rows hold (see pipeline.shards.table):
    every score and embedding of the configured `scorers`, every timing, the sample metadata (with a
    quota's origin columns when the run has one), and the manifest's extras with their plan types."""
    from pipeline.columns import EMBEDDING_PREFIX
    from pipeline.scoring.registry import resolve_scorers
    from pipeline.shards.table import EMBEDDING_TYPE

    string, integer, number = pa.string(), pa.int64(), pa.float64()
    configured = resolve_scorers(scorers)
    fields = [pa.field(f"score_{name}", number) for name in configured.scores]
    fields += [pa.field(f"time_{name}", number) for name in TIMING_NAMES]
    fields += [pa.field(f"{EMBEDDING_PREFIX}{name}", EMBEDDING_TYPE) for name in configured.embeddings]
    fields += [
        pa.field(name, kind)
        for name, kind in [
            ("row", integer), ("id", string), ("prompt", string), ("style", string), ("content", string),
            ("seed", integer), ("manifest_seed", integer), ("caption", string), ("preset", string),
            ("model", string), ("params", string), ("filter_rule", string), ("filter_value", number),
            ("attempt_id", string), ("node_id", string), ("actor_id", string),
        ]
    ]  # fmt: skip
    if quota:
        fields += [pa.field(ORIGIN_UID, string), pa.field(QUOTA_ROUND, integer)]
    for name in present_columns(plan_schema.names if plan_schema is not None else []):
        fields.append(pa.field(name, integer if name in INTEGER_COLUMNS else number))
    for extra in plan_schema or []:
        if extra.name in extra_columns([extra.name]):  # nested values are stored as canonical JSON strings
            kind = string if pa.types.is_nested(extra.type) else extra.type
            fields.append(pa.field(f"extra_{extra.name}", kind))
    return pa.schema(fields)


def _row_settings(outcome: RowOutcome) -> dict[str, Any]:
    """The per-row settings the plan has (none without those columns, so such a json is unchanged):
    the row's values (null: the run's setting, recorded in `params`), width and height filled from the
    image for a row that leaves them to the run."""
    settings = {name: outcome.row[name] for name in present_columns(outcome.row)}
    if WIDTH in settings and settings[WIDTH] is None and outcome.image is not None:
        settings["width"], settings["height"] = outcome.image.size
    return settings


def _table_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The parquet's metadata columns: the json's fields, extras as `extra_<name>` columns."""
    flat = {k: v for k, v in meta.items() if k not in ("extra", "scores", "status", "filter", "shard_id")}
    flat.update({f"extra_{k}": v for k, v in meta["extra"].items()})
    flat["filter_rule"] = (meta["filter"] or {}).get("rule")
    flat["filter_value"] = (meta["filter"] or {}).get("value")
    return flat


# --- what the output says about its shards --------------------------------------------------------


def read_plan_shard(store, shard_id: int):
    """One shard's rows of the output's plan.parquet, opened through the store (so S3 options apply)."""
    with store.open(PLAN_KEY) as handle:
        return read_shard(handle, shard_id)


def output_uses_legacy_layout(store) -> bool:
    """Whether the output's run.json is of format 1 (shard parquets under shards/, not metadata/)."""
    try:
        return uses_legacy_layout(load_run_record(store) or {})
    except RunRecordError:
        return False


def commit_failed_shard(
    store, config: RunConfig, shard_id: int, errors: Sequence[str], attempt_id: str
) -> Any:
    """Record every row of a shard that failed all its attempts as failed (with the errors) and commit
    that, so the shard's rows are accounted for and a resume does not retry it forever."""
    reason = "shard failed every attempt: " + " | ".join(errors)
    rows = read_plan_shard(store, shard_id)
    outcomes = [RowOutcome(row=row, status="failed", reason=reason) for row in rows.to_pylist()]
    files = ShardFiles(config, {})
    files.plan_schema = rows.schema
    legacy = output_uses_legacy_layout(store)
    contents = files.contents(shard_id, attempt_id, outcomes)
    summary_extra = {"shard_failed": True}
    return commit_shard_files(
        store, shard_id, contents, attempt_id=attempt_id, legacy_layout=legacy, summary_extra=summary_extra
    )
