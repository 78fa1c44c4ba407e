"""ShardWorker: one shard end to end, with no Ray in it.

    plan rows -> inputs (prefetched a batch ahead) -> generate in batches -> score -> filter
              -> tar (kept) + optional rejected tar + shard parquet (every row) -> commit

Generation runs under a lock, one shard at a time; building the files (pipeline.worker.shard_files)
and committing them (pipeline.shards.commit) happens on the uploader's thread (pipeline.worker.uploader),
so the next shard generates while this one uploads.

Batches never mix sizes or per-row settings (manifests/row_settings.py: the plan sorts such rows
together, and a batch ends where its rows' `batch_key` changes), and an image whose size is not the
one its row asked for fails that row.

Nothing is lost: a row whose input is bad or whose generation or scoring raises is recorded as failed
with its error (a batch that raises is retried one row at a time to isolate the culprit), and the
shard still commits with every planned row in its parquet.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from manifests.row_settings import batch_key, row_overrides
from manifests.uid import generation_seed
from pipeline.captions import render_caption
from pipeline.rbmod.requests import GenerationRequest, StyleRef
from pipeline.run_config import RunConfig
from pipeline.shards.commit import commit_shard_files
from pipeline.shards.table import ROW_STATUSES
from pipeline.worker.inputs import InputLoader, RowInputs
from pipeline.worker.parts import build_parts
from pipeline.worker.result import RanOn, RowOutcome, ShardResult
from pipeline.worker.shard_files import ShardFiles, output_uses_legacy_layout, read_plan_shard
from pipeline.worker.uploader import Uploader

log = logging.getLogger("stylegen.worker")

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
        ran_on: RanOn | None = None,
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
        self.ran_on = ran_on or RanOn()  # where this worker runs: recorded in each shard's parquet
        self.files = ShardFiles(config, self.model_info, self.ran_on)
        self.legacy_layout = False  # a resumed format-1 output keeps its parquets under shards/
        self._generation_lock = threading.Lock()
        self._uploader = Uploader(max_queued=config.execution.upload_queue_shards)

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        output: str,
        *,
        device: str | None = None,
        heartbeat: Heartbeat | None = None,
        row_started: RowStarted | None = None,
        ran_on: RanOn | None = None,
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
            ran_on=ran_on,
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
            batches = split_batches(rows, self.config.execution.batch_size)
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
            commit = functools.partial(self._commit, shard_id, attempt_id, outcomes)
            upload = self._uploader.submit(commit)  # blocks while the upload queue is full: backpressure
        result: ShardResult = upload.result()
        return dataclasses.replace(result, seconds=time.monotonic() - started, generate_s=generate_s)

    def _read_rows(self, shard_id: int) -> list[dict[str, Any]]:
        rows = read_plan_shard(self.store, shard_id)
        if self.files.plan_schema is None:  # the same for every shard of the run
            self.files.plan_schema = rows.schema
            self.legacy_layout = output_uses_legacy_layout(self.store)
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
            if result is not None and (problem := _size_mismatch(outcome.row, result.image)):
                outcome.reason = f"generation: {problem}"
            elif result is not None:
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
            overrides=row_overrides(outcome.row),
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

    # --- files and commit (on the uploader's thread) ----------------------------------------------

    def _commit(self, shard_id: int, attempt_id: str, outcomes: list[RowOutcome]) -> ShardResult:
        started = time.monotonic()
        result = commit_shard_files(
            self.store,
            shard_id,
            self.files.contents(shard_id, attempt_id, outcomes),
            attempt_id=attempt_id,
            legacy_layout=self.legacy_layout,
            work_dir=self.work_dir,
        )
        return ShardResult(
            shard_id=shard_id,
            attempt_id=attempt_id,
            committed=commit_won(result),
            rows=len(outcomes),
            commit_s=time.monotonic() - started,
            seconds=0.0,
            models=self.files.models_record(),
            node_id=self.ran_on.node_id,
            actor_id=self.ran_on.actor_id,
            ledger_entry=getattr(result, "ledger_entry", None),
            groups=count_groups(outcomes, self.config.quota),
            **count_statuses(outcomes),
        )

    def close(self) -> None:
        self._uploader.close(timeout=60)
        self.inputs.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def split_batches(rows: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Runs of rows that share a `batch_key` (size and per-row settings), cut every `size` rows. Without
    per-row settings every key is the same, so these are the plain `size`-row slices."""
    batches: list[list[dict[str, Any]]] = []
    for row in rows:
        last = batches[-1] if batches else None
        if last is not None and len(last) < size and batch_key(last[0]) == batch_key(row):
            last.append(row)
        else:
            batches.append([row])
    return batches


def _size_mismatch(row: Mapping[str, Any], image: Any) -> str | None:
    """Why a generated image cannot stand for its row: it is not the width x height the row asked for."""
    if row.get("width") is None or getattr(image, "size", None) is None:
        return None
    asked = (row["width"], row["height"])
    if tuple(image.size) != asked:
        return f"the image is {image.size[0]}x{image.size[1]}, the row asks for {asked[0]}x{asked[1]}"
    return None


def commit_won(result: Any) -> bool:
    """Whether our attempt is the committed one (the store's result type is duck-typed here)."""
    return bool(getattr(result, "won", result))


def count_statuses(outcomes: Sequence[RowOutcome]) -> dict[str, int]:
    counts = {"kept": 0, "rejected": 0, "failed": 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


def count_groups(outcomes: Sequence[RowOutcome], quota) -> dict[str, tuple[int, int, int]]:
    """(kept, rejected, failed) per quota group (none without a quota)."""
    if quota is None:
        return {}
    counts: dict[str, list[int]] = {}
    for outcome in outcomes:
        counts.setdefault(quota.group_of(outcome.row), [0, 0, 0])[ROW_STATUSES.index(outcome.status)] += 1
    return {group: (kept, rejected, failed) for group, (kept, rejected, failed) in counts.items()}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
