"""ShardWorker: one shard end to end, with no Ray in it.

    plan rows -> inputs (prefetched a batch ahead) -> generate in batches -> score -> filter
              -> tar (kept) + optional rejected tar + shard parquet (every row) -> commit

Generation runs under a lock, one shard at a time; building the files and committing them happens on
a background thread fed by a bounded queue, so the next shard generates while this one uploads, and a
slow store makes generation wait instead of piling finished shards up in memory.

Nothing is lost: a row whose input is bad or whose generation or scoring raises is recorded as failed
with its error (a batch that raises is retried one row at a time to isolate the culprit), and the
shard still commits with every planned row in its parquet.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.plan import read_shard
from manifests.uid import generation_seed
from pipeline.captions import extra_columns, render_caption
from pipeline.models.info import model_fingerprint, public_model_info
from pipeline.output.run_record import RunRecordError, load_run_record
from pipeline.rbmod.requests import GenerationRequest, StyleRef
from pipeline.run_config import RunConfig
from pipeline.shards.images import encode_image
from pipeline.shards.table import ShardRow, write_shard_table
from pipeline.shards.tar import ShardSample, write_tar
from pipeline.storage import open_store
from pipeline.storage.layout import PLAN_KEY, uses_legacy_layout
from pipeline.worker.inputs import InputLoader, RowInputs
from pipeline.worker.result import RowOutcome, ShardResult

log = logging.getLogger("stylegen.worker")

TIMING_NAMES = ("generate_s", "score_s")
PLACEMENT_COLUMNS = ("node_id", "actor_id")  # the Ray node and actor that wrote a shard (null without Ray)

Heartbeat = Callable[[str, int, int], None]  # (attempt_id, shard_id, images done in this shard)
RowStarted = Callable[[str, int, int, str], None]  # (attempt_id, shard_id, images done, uid): confirmed


class ShardWorker:
    def __init__(
        self,
        generator,
        scorer,
        rules,
        store,
        config: RunConfig,
        *,
        model_info: dict[str, Any] | None = None,
        heartbeat: Heartbeat | None = None,
        row_started: RowStarted | None = None,
        inputs: InputLoader | None = None,
        work_dir: Path | None = None,
        placement: dict[str, str] | None = None,
    ):
        self.generator = generator
        self.scorer = scorer
        self.rules = rules
        self.store = store
        self.config = config
        self.model_info = model_info or {}
        self.heartbeat = heartbeat or (lambda attempt_id, shard_id, done: None)
        self.row_started = row_started or (lambda attempt_id, shard_id, done, uid: None)
        self.inputs = inputs or InputLoader(max_input_bytes=config.execution.max_input_mib * 2**20)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="stylegen-worker-"))
        self.files = ShardFiles(config, self.model_info)
        # Where this worker runs ({"node_id", "actor_id"} under Ray): recorded in each shard's parquet.
        self.files.placement = dict(placement or {})
        self._generation_lock = threading.Lock()
        self._uploads: queue.Queue = queue.Queue(maxsize=config.execution.upload_queue_shards)
        self._uploader = threading.Thread(target=self._upload_loop, name="shard-uploader", daemon=True)
        self._uploader.start()

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        output: str,
        *,
        device: str | None = None,
        heartbeat: Heartbeat | None = None,
        row_started: RowStarted | None = None,
        placement: dict[str, str] | None = None,
    ) -> ShardWorker:
        """Load everything named by the config once (models, scorer, rules, store)."""
        parts = build_parts(config, output, device=device)
        return cls(
            parts.generator,
            parts.scorer,
            parts.rules,
            parts.store,
            config,
            model_info=parts.model_info,
            heartbeat=heartbeat,
            row_started=row_started,
            placement=placement,
        )

    # --- one shard ---------------------------------------------------------------------------------

    def run_shard(
        self, shard_id: int, attempt_id: str, culprits: Mapping[str, str] | None = None
    ) -> ShardResult:
        """Run and commit one shard. `culprits` (uid -> reason) switches to isolation mode, which the
        scheduler uses for a shard that keeps hanging or crashing: those rows are recorded failed with
        their reason without running, and every other row runs alone, announced (confirmed) before it
        starts, so that if this attempt dies too, the row that was running is known."""
        started = time.monotonic()
        rows = self._read_rows(shard_id)
        if culprits is None:
            size = self.config.execution.batch_size
            batches = [rows[i : i + size] for i in range(0, len(rows), size)]
        else:
            batches = [[row] for row in rows if row["uid"] not in culprits]
        pending = self.inputs.prefetch(batches[0]) if batches else None
        outcomes: list[RowOutcome] = []
        with self._generation_lock:
            generate_started = time.monotonic()
            self.heartbeat(attempt_id, shard_id, 0)
            for index, batch in enumerate(batches):
                loaded = pending.result()
                if index + 1 < len(batches):
                    pending = self.inputs.prefetch(batches[index + 1])  # decode while this batch runs
                if culprits is not None:
                    self.row_started(attempt_id, shard_id, len(outcomes), batch[0]["uid"])
                outcomes.extend(self.run_batch(batch, loaded))
                self.heartbeat(attempt_id, shard_id, len(outcomes))
            if culprits is not None:  # back in plan order, with the culprits recorded failed
                outcomes += [
                    RowOutcome(row=row, status="failed", reason=culprits[row["uid"]])
                    for row in rows
                    if row["uid"] in culprits
                ]
                position = {row["uid"]: index for index, row in enumerate(rows)}
                outcomes.sort(key=lambda outcome: position[outcome.row["uid"]])
            generate_s = time.monotonic() - generate_started
            job = _UploadJob(shard_id, attempt_id, outcomes, Future())
            self._uploads.put(job)  # blocks while the upload queue is full: backpressure
        result: ShardResult = job.future.result()
        return dataclasses.replace(result, seconds=time.monotonic() - started, generate_s=generate_s)

    def _read_rows(self, shard_id: int) -> list[dict[str, Any]]:
        rows = read_plan_shard(self.store, shard_id)
        if self.files.plan_schema is None:  # the same for every shard of the run
            self.files.plan_schema = rows.schema
            self.files.legacy_layout = output_uses_legacy_layout(self.store)
        return rows.to_pylist()

    # --- one batch ---------------------------------------------------------------------------------

    def run_batch(self, rows: Sequence[dict[str, Any]], loaded: Sequence[RowInputs]) -> list[RowOutcome]:
        outcomes = [RowOutcome(row=row, status="failed") for row in rows]
        runnable = []
        for outcome, inputs in zip(outcomes, loaded, strict=True):
            try:
                outcome.seed = generation_seed(outcome.row["uid"], outcome.row.get("seed"))
            except ValueError as error:
                outcome.reason = f"seed: {error}"
                continue
            try:
                outcome.caption = render_caption(self.config.caption.template, outcome.row)
            except Exception as error:  # a format spec that does not fit this row's value
                outcome.reason = f"caption: {_describe(error)}"
                continue
            if inputs.error:
                outcome.reason = f"input {inputs.error}"
            else:
                runnable.append((outcome, inputs))

        generated = self._generate(runnable)
        if generated:
            self._score(generated)
        for outcome, _ in generated:
            if outcome.status != "failed":
                self._filter(outcome)
        return outcomes

    def _generate(self, runnable: list[tuple[RowOutcome, RowInputs]]) -> list[tuple[RowOutcome, RowInputs]]:
        """Generate a batch; if the batch raises, retry row by row so only the culprit fails."""
        if not runnable:
            return []
        requests = [self._request(outcome, inputs) for outcome, inputs in runnable]
        started = time.monotonic()
        try:
            results = self._checked_generate(requests)
        except Exception:
            results = []
            for request, (outcome, _) in zip(requests, runnable, strict=True):
                one_started = time.monotonic()
                try:
                    results.append(self._checked_generate([request])[0])
                except Exception as error:
                    outcome.reason = f"generation: {_describe(error)}"
                    results.append(None)
                outcome.timings["generate_s"] = time.monotonic() - one_started
        else:
            per_row = (time.monotonic() - started) / len(requests)
            for outcome, _ in runnable:
                outcome.timings["generate_s"] = per_row
        generated = []
        for result, (outcome, inputs) in zip(results, runnable, strict=True):
            if result is not None:
                outcome.status, outcome.image, outcome.params = "kept", result.image, dict(result.params)
                generated.append((outcome, inputs))
        return generated

    def _checked_generate(self, requests: list) -> list:
        results = self.generator.generate(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"generator returned {len(results)} results for {len(requests)} requests")
        return results

    def _request(self, outcome: RowOutcome, inputs: RowInputs):
        return GenerationRequest(
            prompt=outcome.row["prompt"],
            styles=(StyleRef(inputs.style, 1.0),),
            seed=outcome.seed,
            content=inputs.content,
            uid=outcome.row["uid"],
        )

    def _score(self, generated: list[tuple[RowOutcome, RowInputs]]) -> None:
        """Score a batch (row by row if the batch raises); a row whose scoring raises fails."""
        if self.scorer is None:
            return
        try:
            self._score_rows(generated)
        except Exception:
            for item in generated:
                try:
                    self._score_rows([item])
                except Exception as error:
                    item[0].status, item[0].reason = "failed", f"scoring: {_describe(error)}"

    def _score_rows(self, items: list[tuple[RowOutcome, RowInputs]]) -> None:
        started = time.monotonic()
        scores, embeddings = self.scorer.score_with_embeddings(
            [outcome.image for outcome, _ in items],
            [outcome.row["prompt"] for outcome, _ in items],
            [inputs.style for _, inputs in items],
            [inputs.content for _, inputs in items],
        )
        per_row = (time.monotonic() - started) / len(items)
        for index, (outcome, _) in enumerate(items):
            outcome.scores = {name: values[index] for name, values in scores.items()}
            outcome.embeddings = {name: vectors[index] for name, vectors in embeddings.items()}
            outcome.timings["score_s"] = per_row

    def _filter(self, outcome: RowOutcome) -> None:
        if self.rules is None:
            return
        verdict = self.rules.evaluate(outcome.scores)
        if verdict.status != "kept":
            outcome.status = "rejected"
            outcome.rule, outcome.rule_value = verdict.rule, verdict.value
            outcome.reason = f"{verdict.rule} (value {verdict.value!r})"

    # --- files and commit (background thread) -------------------------------------------------------

    def _upload_loop(self) -> None:
        while True:
            job = self._uploads.get()
            if job is None:
                return
            try:
                job.future.set_result(self._build_and_commit(job))
            except BaseException as error:  # handed to the shard's caller
                job.future.set_exception(error)

    def _build_and_commit(self, job: _UploadJob) -> ShardResult:
        started = time.monotonic()
        folder = self.work_dir / f"shard-{job.shard_id:06d}-{job.attempt_id}"
        try:
            files = self.files.write(job.shard_id, job.attempt_id, job.outcomes, folder)
            summary = {"rows": len(job.outcomes), **count_statuses(job.outcomes)}
            result = self.store.commit_shard(
                job.shard_id,
                **files,
                summary=summary,
                attempt_id=job.attempt_id,
                legacy_layout=self.files.legacy_layout,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        counts = count_statuses(job.outcomes)
        return ShardResult(
            shard_id=job.shard_id,
            attempt_id=job.attempt_id,
            committed=commit_won(result),
            rows=len(job.outcomes),
            commit_s=time.monotonic() - started,
            seconds=0.0,
            models=self.files.models_record(),
            node_id=self.files.placement.get("node_id"),
            actor_id=self.files.placement.get("actor_id"),
            **counts,
        )

    def close(self) -> None:
        self._uploads.put(None)
        self._uploader.join(timeout=60)
        self.inputs.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


class ShardFiles:
    """Turns a shard's outcomes into its local files; also used by the driver for a shard that failed
    every attempt (all rows failed, no images)."""

    def __init__(self, config: RunConfig, model_info: dict[str, Any]):
        self.config = config
        self.model_info = public_model_info(model_info)  # no local paths: it is published in run.json
        self.model = model_fingerprint(self.model_info)  # what each sample carries instead
        self.plan_schema: pa.Schema | None = None  # set from the plan: types of the manifest's extras
        self.placement: dict[str, str] = {}  # node_id / actor_id of the process writing the shard
        self.legacy_layout = False  # a resumed format-1 output keeps its parquets under shards/

    def models_record(self) -> dict[str, Any]:
        """run.json's `models` entry for this worker's models: {fingerprint: public description}."""
        return {self.model: self.model_info} if self.model else {}

    def write(
        self, shard_id: int, attempt_id: str, outcomes: Sequence[RowOutcome], folder: Path
    ) -> dict[str, Path | None]:
        """The shard's local files: kept tar, shard parquet (every row), rejected tar if configured."""
        fmt, quality = self.config.image.format, self.config.image.quality
        samples: dict[str, list] = {"kept": [], "rejected": []}
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
                        **self._placement_columns(),
                    },
                    embeddings=outcome.embeddings,
                )
            )
        files: dict[str, Path | None] = {"tar": folder / "kept.tar", "table": folder / "rows.parquet"}
        write_tar(samples["kept"], files["tar"])
        schema = shard_table_schema(self.plan_schema, self.config.scoring.scorers)
        write_shard_table(rows, files["table"], shard_id, schema)
        files["rejected"] = None
        if self.config.keep_rejected:
            files["rejected"] = folder / "rejected.tar"
            write_tar(samples["rejected"], files["rejected"])
        return files

    def _placement_columns(self) -> dict[str, str | None]:
        """Where the shard ran, like the attempt id only in the parquet (the tar stays reproducible)."""
        return {name: self.placement.get(name) for name in PLACEMENT_COLUMNS}

    def sample_metadata(self, outcome: RowOutcome, shard_id: int) -> dict[str, Any]:
        """The sample's `.json` member: its own fields, the preset, the model fingerprint (the models
        themselves are described once in run.json), its parameters and scores. Only reproducible fields:
        timings and the attempt go to the shard parquet, so a rerun writes byte-identical tars."""
        row = outcome.row
        return {
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
        }


def commit_failed_shard(
    store, config: RunConfig, shard_id: int, errors: Sequence[str], attempt_id: str
) -> Any:
    """Record every row of a shard that failed all its attempts as failed (with the errors) and commit
    that, so the shard's rows are accounted for and a resume does not retry it forever."""
    reason = "shard failed every attempt: " + " | ".join(errors)
    rows = read_plan_shard(store, shard_id)
    outcomes = [RowOutcome(row=row, status="failed", reason=reason) for row in rows.to_pylist()]
    shard_files = ShardFiles(config, {})
    shard_files.plan_schema = rows.schema
    legacy = output_uses_legacy_layout(store)
    with tempfile.TemporaryDirectory(prefix="stylegen-failed-") as folder:
        files = shard_files.write(shard_id, attempt_id, outcomes, Path(folder))
        summary = {"rows": len(outcomes), **count_statuses(outcomes), "shard_failed": True}
        return store.commit_shard(
            shard_id, **files, summary=summary, attempt_id=attempt_id, legacy_layout=legacy
        )


@dataclass
class _UploadJob:
    shard_id: int
    attempt_id: str
    outcomes: list[RowOutcome]
    future: Future


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


def shard_table_schema(plan_schema: pa.Schema | None, scorers: Sequence[str] = ()) -> pa.Schema:
    """The columns every shard parquet of a run has, whatever its rows hold (see pipeline.shards.table):
    every score and embedding of the configured `scorers`, every timing, the sample metadata, and the
    manifest's extras with their plan types."""
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
    for extra in plan_schema or []:
        if extra.name in extra_columns([extra.name]):  # nested values are stored as canonical JSON strings
            kind = string if pa.types.is_nested(extra.type) else extra.type
            fields.append(pa.field(f"extra_{extra.name}", kind))
    return pa.schema(fields)


def _table_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The parquet's metadata columns: the json's fields, extras as `extra_<name>` columns."""
    flat = {k: v for k, v in meta.items() if k not in ("extra", "scores", "status", "filter", "shard_id")}
    flat.update({f"extra_{k}": v for k, v in meta["extra"].items()})
    flat["filter_rule"] = (meta["filter"] or {}).get("rule")
    flat["filter_value"] = (meta["filter"] or {}).get("value")
    return flat


def commit_won(result: Any) -> bool:
    """Whether our attempt is the committed one (the store's result type is duck-typed here)."""
    return bool(getattr(result, "won", result))


def count_statuses(outcomes: Sequence[RowOutcome]) -> dict[str, int]:
    counts = {"kept": 0, "rejected": 0, "failed": 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --- building a worker from a RunConfig ------------------------------------------------------------


@dataclass
class WorkerParts:
    generator: Any
    scorer: Any  # None when scoring is disabled
    rules: Any  # None when scoring is disabled
    store: Any
    model_info: dict[str, Any]


def build_parts(config: RunConfig, output: str, *, device: str | None = None) -> WorkerParts:
    """Open the store and load the generator, scorer and filter rules the config names (once per process)."""
    store = open_store(output, **config.storage)
    cache_dir = Path(config.model_cache_dir) if config.model_cache_dir else None
    csd = None
    if config.generator.kind == "fake":
        from pipeline.models.fake_generator import FakeGenerator

        generator = FakeGenerator(config.generator.fake)
        model_info: dict[str, Any] = {"generator": "fake", "size": config.generator.fake.size}
    else:
        from pipeline.models.loading import load_preset
        from pipeline.rbmod.generate import RBModGenerator, RBModSettings
        from pipeline.scoring.scorer import csd_from_preset

        models = load_preset(
            config.preset,
            device=device,
            paths=config.model_paths or None,
            cache_dir=cache_dir,
            s3_options=config.storage,
        )
        generator = RBModGenerator(models, RBModSettings(**config.rbmod))
        model_info = {"generator": "rbmod", **models.config.model_dump(mode="json")}
        csd = csd_from_preset(models)  # the loaded CSD is shared with the scorer (None: CLIP fallback)
    scorer = rules = None
    if config.scoring.enabled:
        from pipeline.models.cache import with_local_copies
        from pipeline.scoring.models import scoring_preset
        from pipeline.scoring.rules import FilterRules
        from pipeline.scoring.scorer import Scorer

        # s3:// scorer models (clip_model, dino_model) load from this node's copy; metadata keeps the URIs
        options = with_local_copies(config.scoring.options, cache_dir, config.storage)
        scoring = scoring_preset(
            config.scoring.preset or config.preset,
            cache_dir,
            scorers=config.scoring.scorers,
            **options,
        )
        scorer = Scorer(scoring, device=device, csd=csd)
        rules = FilterRules.parse(list(config.scoring.filters), set(scorer.names))
        model_info["scoring"] = scoring.model_copy(update=config.scoring.options).model_dump(mode="json")
    return WorkerParts(generator, scorer, rules, store, model_info)
