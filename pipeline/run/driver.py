"""The driver: plan -> run.json -> resume -> schedule -> finalize.

`run_job` is the whole of `stylegen run` (and what `stylegen demo` calls):

1. read and plan the manifest; the first run writes `plan.parquet`, then `run.json` (config, its
   fingerprint, the manifest and plan fingerprints, versions; never a credential);
2. a later run of the same output compares itself with `run.json` and refuses a changed manifest or
   config, naming what changed (`restart=True` deletes the old output first);
3. one LIST of the commit markers gives the shards already done; the rest run on the Ray actor pool
   (actors/pool.py), with deadlines, retries and failed-shard records;
4. finalize: remove orphaned attempt objects, write `summary.json`, print the summary table.
The log of each run goes to `logs/run-<UTC timestamp>.log` under the output (for s3:// every
`execution.log_upload_s` during the run, and at its end). SIGTERM/SIGINT stop it gracefully
(pipeline/run/stop.py): no new shards, commits in progress drain, the log is uploaded, RunStopped is raised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from manifests.cli_format import make_console
from pipeline.errors import UserError
from pipeline.json_format import pretty_json
from pipeline.output.accounting import sample_counts
from pipeline.output.run_record import (
    READABLE_FORMATS,
    RUN_FORMAT,
    RunRecordError,
    generations,
    is_run_record,
    load_run_record,
    retry_shards,
    shard_sizes,
    store_run_record,
)
from pipeline.output.shard_tables import failed_uids
from pipeline.run.logs import PeriodicLogUpload
from pipeline.run.preflight import check_caption, check_config, check_staged_models
from pipeline.run.progress import RunProgress, close_run_log, open_run_log, summary_table
from pipeline.run.stop import RunStopped, StopSignals
from pipeline.run.summary import PoolStats, RunSummary
from pipeline.run_config import RunConfig, changed_keys, config_fingerprint
from pipeline.storage.layout import CARD_KEY, PLAN_KEY, REPORT_KEY, RUN_KEY, SUMMARY_KEY
from pipeline.storage.layout import log_key as run_log_key
from pipeline.versions import package_versions
from pipeline.worker.result import ShardResult
from pipeline.worker.shard_worker import commit_failed_shard

log = logging.getLogger("stylegen.driver")


class RunRefused(UserError, RuntimeError):
    """The output holds a different run (changed manifest or config), or --restart would delete
    something that is not a stylegen output."""

    exit_code = 2


@dataclass(frozen=True)
class Placement:
    """Where the generator actors run: the pool's target size (None: execution.max_actors, else one
    per GPU), the GPUs each holds (may be fractional) and the Ray cluster (None: RAY_ADDRESS, else a
    local instance of our own)."""

    actors: int | None = None
    gpus_per_actor: float = 1.0
    address: str | None = None


def run_job(
    manifest: str,
    output: str,
    config: RunConfig,
    *,
    actors: int | None = None,
    gpus_per_actor: float = 1.0,
    address: str | None = None,
    restart: bool = False,
    append: bool = False,
    retry_failed: bool = False,
    console: Console | None = None,
    live: bool | None = None,
) -> RunSummary:
    """Run (or resume) `manifest` into `output` (a folder or s3://bucket/prefix) and return the summary.

    actors: pool size (default: every GPU, or one logical GPU on a CPU machine); gpus_per_actor may be
    fractional; address: an existing Ray cluster (else RAY_ADDRESS, else a local instance; an already
    initialized Ray is reused and left running); restart: delete the output's objects first;
    append: `manifest` holds every row of the output's run and more: plan the new rows into new shards
    after the existing ones (pipeline.run.append); retry_failed: regenerate the failed rows of the finished
    run into new shards after its own (pipeline.run.retry); live: draw the progress bar (default: when the
    console is a terminal; else key=value lines). Raises RunStopped after SIGTERM/SIGINT (graceful: see
    pipeline/run/stop.py)."""
    console = console or make_console(stderr=True)
    started = time.monotonic()
    # Everything that can refuse the run happens before anything is written or Ray starts.
    # Local model folders are checked here when the actors run on this machine (a cluster's nodes may
    # hold folders the driver's machine does not; there the actors report them).
    remote = bool(address) or os.environ.get("RAY_ADDRESS", "local") not in ("", "local")
    check_config(config, local_models=not remote)
    check_staged_models(config)
    placement = Placement(actors, gpus_per_actor, address)
    with StopSignals() as stop:  # planning stops at once on a signal, scheduling drains
        return _run_logged(
            manifest,
            output,
            config,
            placement,
            restart=restart,
            append=append,
            retry_failed=retry_failed,
            console=console,
            live=live,
            started=started,
            stop=stop,
        )


def _run_logged(
    manifest: str,
    output: str,
    config: RunConfig,
    placement: Placement,
    *,
    restart: bool,
    append: bool,
    retry_failed: bool,
    console: Console,
    live: bool | None,
    started: float,
    stop: StopSignals,
) -> RunSummary:
    from pipeline.storage import StorageError, open_store
    from pipeline.storage.local import os_error_message

    store = open_store(output, **config.storage)
    plan, record = plan_run(manifest, config)
    prior = prepare_output(store, record, restart, append=append, plan=plan)
    if retry_failed:
        prior = prepare_retry(store, prior)
    if prior is None:  # run.json first: from then on the output is provably ours
        store_run_record(store, record)
    if prior is None or not store.exists(PLAN_KEY):  # also after a crash between the two
        write_plan(store, plan)
    log_key = run_log_key(datetime.now(timezone.utc))
    log_path = _local_log_path(store, log_key)
    try:
        handler = open_run_log(log_path)
    except OSError as error:
        raise StorageError(os_error_message(error, log_path)) from None
    uploads = None
    if not _is_local(store):
        uploads = PeriodicLogUpload(store, log_key, log_path, handler, config.execution.log_upload_s)
        uploads.__enter__()
    try:
        summary = _run(
            manifest,
            store,
            config,
            prior or record,
            prior is not None,
            placement,
            console,
            live,
            started,
            stop,
            log_path,
        )
        summary.log_uri = store.url(log_key)
        if not summary.shards_committed and summary.shards_resumed >= summary.shards_planned:
            # A rerun of a finished run: summary.json, report.html and the card keep the run that did
            # the work.
            summary.report_uri = store.url(REPORT_KEY) if store.exists(REPORT_KEY) else None
            summary.card_uri = store.url(CARD_KEY) if store.exists(CARD_KEY) else None
            console.print(nothing_to_do(summary), markup=False)
            return summary
        summary.card_uri = write_card(store)
        summary.report_uri = write_run_report(store, summary)
        store.put_bytes(SUMMARY_KEY, pretty_json(summary.to_dict()))
        console.print(summary_table(summary))
        if summary.failed:
            console.print(failed_rows_note(store, summary), markup=False)
        return summary
    except RunStopped as error:
        log.warning("run %s", error)
        raise
    except BaseException as error:
        log.error("run stopped: %s: %s", type(error).__name__, error)
        raise
    finally:
        if uploads is not None:
            uploads.stop()
        close_run_log(handler)
        if not _is_local(store):
            try:
                store.put_file(log_key, log_path)
                log_path.unlink(missing_ok=True)
            except Exception as error:  # never let the log upload hide why the run stopped
                console.print(f"warning: the run log stays at {log_path}: upload failed ({error})")


def prepare_output(
    store, record: dict[str, Any], restart: bool, *, append: bool = False, plan=None
) -> dict[str, Any] | None:
    """The output's earlier run record when this run resumes it, else None (a new run). Refuses a
    different run, and any output that no stylegen run record proves is ours: --restart deletes only
    such an output's own files, and a new run only starts in an empty folder or prefix. With `append`,
    a bigger manifest is planned into new shards after the run's (the record returned is the updated
    one); a manifest that drops or changes rows of the run is refused, naming them."""
    if restart:
        clear_output(store)
        return None
    prior = read_run_record(store)
    if prior is None:
        if store.list(""):
            raise RunRefused(
                f"{store.uri} is not empty and has no {RUN_KEY}: it is not a stylegen output, and a run "
                "could overwrite its files; choose an empty or new --output"
            )
        return None
    if append and prior.get("manifest", {}).get("fingerprint") != record["manifest"]["fingerprint"]:
        from pipeline.run.append import AppendRefused, append_run

        ensure_same_run(prior, record, store.uri, same_manifest=False)
        try:
            appended = append_run(store, prior, plan, record)
        except AppendRefused as error:
            raise RunRefused(str(error)) from None
        added = appended["generations"][-1]
        log.info("append: %d new rows in %d new shards from shard %d on", added["rows"], added["shards"],
                 added["first_shard"])  # fmt: skip
        return appended
    ensure_same_run(prior, record, store.uri)
    return prior


def prepare_retry(store, prior: dict[str, Any] | None) -> dict[str, Any]:
    """--retry-failed: the run record with the failed rows planned into new shards (pipeline.run.retry);
    refused unless the output holds a finished run."""
    from pipeline.run.retry import plan_retry

    if prior is None:
        raise RunRefused(f"--retry-failed: {store.uri} holds no run to retry; run it first")
    markers = store.committed_shards()
    missing = sorted(set(shard_sizes(prior)) - set(markers))
    if missing:
        raise RunRefused(
            f"--retry-failed: the run in {store.uri} is not finished ({len(missing)} shard(s) not committed, "
            f"e.g. shard {missing[0]}); rerun without --retry-failed to finish it first"
        )
    failed = failed_uids(store, markers)
    if not failed:
        log.info("--retry-failed: no failed rows to retry")
        return prior
    updated = plan_retry(store, prior, failed)
    added = updated["generations"][-1]
    log.info(
        "--retry-failed: %d failed rows in %d new shards from shard %d on",
        added["rows"],
        added["shards"],
        added["first_shard"],
    )
    return updated


def write_card(store) -> str | None:
    """README.md, the Hugging Face dataset card (pipeline.dataset.card), so `datasets.load_dataset(output)`
    reads the shards with declared types. Like the report, a failure here is a warning."""
    from pipeline.dataset.card import write_dataset_card

    try:
        return write_dataset_card(store)
    except Exception as error:
        log.warning(
            "README.md (dataset card) not written (%s: %s); `stylegen card` can retry",
            type(error).__name__,
            error,
        )
        return None


def write_run_report(store, summary: RunSummary | None = None) -> str | None:
    """report.html for the output (galleries, score histograms with the filter thresholds, throughput).
    The data is complete before this runs, so a failure here is a warning, not a failed run."""
    from pipeline.report.build import build_report

    try:
        latest = summary.to_dict() if summary is not None else None
        store.put_bytes(REPORT_KEY, build_report(store, latest_run=latest).encode("utf-8"))
    except Exception as error:
        log.warning(
            "report.html not written (%s: %s); `stylegen report` can retry", type(error).__name__, error
        )
        return None
    return store.url(REPORT_KEY)


def nothing_to_do(summary: RunSummary) -> str:
    return (
        f"nothing to do: all {summary.shards_planned} shards of {summary.output} are already committed "
        f"({summary.kept} kept, {summary.rejected} rejected, {summary.failed} failed). "
        f"Report: {summary.report_uri or '-'}; --restart starts over."
    )


def failed_rows_note(store, summary: RunSummary, top: int = 3) -> str:
    """The most frequent reasons rows failed, and where every failed row is listed."""
    from pipeline.report.data import failure_reasons
    from pipeline.storage.layout import table_key_of

    markers = store.committed_shards()
    with_failures = {s: m for s, m in sorted(markers.items()) if int(m.summary.get("failed", 0))}
    reasons = failure_reasons(store, with_failures)
    lines = [f"{summary.failed} row(s) failed; most frequent reasons:"]
    lines += [f"  {count} x {reason}" for reason, count in reasons[:top]]
    if len(reasons) > top:
        lines.append(f"  ... and {len(reasons) - top} more reason(s)")
    first = next(iter(with_failures), None)
    where = "-" if first is None else store.url(table_key_of(first, with_failures[first].files))
    lines.append(
        f"every failed row with its reason: status 'failed' in the shard parquets (e.g. {where}) and the "
        f"report's Failed rows ({summary.report_uri or 'stylegen report'})"
    )
    return "\n".join(lines)


def _run(
    manifest,
    store,
    config,
    record,
    resuming,
    placement: Placement,
    console,
    live,
    started,
    stop=None,
    log_path=None,
) -> RunSummary:
    """Run the shards `record` (the output's run.json) plans that are not committed yet."""
    sizes = shard_sizes(record)
    log.info("run %s -> %s: %d rows in %d shards", manifest, store.uri, sum(sizes.values()), len(sizes))
    if resuming:
        log.info("resuming: run.json matches (config %s)", record["config_fingerprint"][:12])

    done = store.committed_shards()
    pending = {shard_id: rows for shard_id, rows in sizes.items() if shard_id not in done}
    before = sample_counts(done)
    progress = RunProgress(
        len(sizes),
        sum(sizes.values()),
        done_shards=len(done),
        done_images=sum(sizes[s] for s in done if s in sizes),
        kept=before.kept,
        rejected=before.rejected,
        console=console,
        live=live,
        interval_s=config.execution.progress_interval_s,
    )
    log.info("%d shards committed before this run, %d to run", len(done), len(pending))
    failed_errors: dict[int, list[str]] = {}
    unfinished: list[tuple[int, str]] = []
    pool = PoolStats()
    if pending:
        from actors.ray_output import ray_output_to

        if stop is not None:
            stop.interruptible = False  # from here on the scheduler drains on a signal
        quiet = ray_output_to(log_path, console) if log_path is not None else contextlib.nullcontext()
        with quiet, progress:
            pool = execute(
                store,
                config,
                pending,
                progress,
                failed_errors,
                unfinished,
                placement,
                stop=stop,
            )
    if pool.stopped:
        raise RunStopped(
            f"stopped by {stop.signal_name}: {progress.done_shards} of {len(sizes)} shards committed "
            f"({progress.done_shards - len(done)} by this run); rerun the same command to resume",
            stop.exit_code,
        )
    finalize(store, unfinished, since_s=time.monotonic() - started)
    final = store.committed_shards()
    counts = sample_counts(final, record)  # every row once: retry shards replace failed rows
    fresh = sum(sizes[s] for s in final if s not in done and s in sizes)
    elapsed = time.monotonic() - started
    return RunSummary(
        output=store.uri,
        shards_planned=len(sizes),
        shards_resumed=len(done),
        shards_committed=len(set(final) - set(done)),
        shards_failed=counts.shards_failed,
        rows=sum(sizes.values()) - sum(sizes[s] for s in retry_shards(record)),
        kept=counts.kept,
        rejected=counts.rejected,
        failed=counts.failed,
        images_this_run=fresh,
        elapsed_s=elapsed,
        images_per_s=fresh / elapsed if elapsed > 0 else 0.0,
        actors=pool.target,
        gpus_per_actor=placement.gpus_per_actor,
        config_fingerprint=record["config_fingerprint"],
        plan_fingerprint=record["plan"]["fingerprint"],
        failed_shard_errors=failed_errors,
        actors_peak=pool.peak(),
        actors_final=pool.final(),
        actor_timeline=[(round(t - started, 3), ready, waiting) for t, ready, waiting in pool.timeline],
    )


# --- planning and run.json -------------------------------------------------------------------------


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


def plan_run(manifest: str, config: RunConfig):
    """Read and plan the manifest; the run record (run.json) that identifies this run."""
    import platform

    from manifests.plan import make_plan
    from manifests.read import read_manifest

    table = read_manifest(manifest)
    check_caption(config, table.column_names)
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
        "versions": {**package_versions(), "python": platform.python_version(), **_more_versions()},
    }
    return plan, record


def _more_versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("ray", "pyarrow", "webdataset")}


_NOT_RESUMABLE = (
    "it is not a stylegen run record, so this output can be neither resumed nor deleted by --restart; "
    "choose another --output"
)


def read_run_record(store) -> dict[str, Any] | None:
    """The output's run.json (None when there is none); RunRefused when it is not a JSON object."""
    try:
        return load_run_record(store)
    except RunRecordError as error:
        raise RunRefused(f"{error}; {_NOT_RESUMABLE}") from None


def ensure_same_run(
    prior: dict[str, Any], record: dict[str, Any], output: str, *, same_manifest: bool = True
) -> None:
    """Refuse to resume a different run, naming exactly what changed (`same_manifest=False`: all but the
    manifest, for --append, which checks the rows itself)."""
    if prior.get("format") not in READABLE_FORMATS:
        raise RunRefused(
            f"{output} holds a run.json of another kind (format {prior.get('format')!r}, "
            f"not {RUN_FORMAT!r}); choose another --output"
        )
    problems = []
    old_manifest, new_manifest = prior["manifest"], record["manifest"]
    manifest_changed = old_manifest["fingerprint"] != new_manifest["fingerprint"]
    if manifest_changed and same_manifest:
        problems.append(
            f"the manifest changed: fingerprint {old_manifest['fingerprint'][:16]} -> "
            f"{new_manifest['fingerprint'][:16]} (rows {old_manifest['rows']} -> {new_manifest['rows']}; "
            f"was {old_manifest['uri']}, now {new_manifest['uri']})"
        )
    prior_config = with_defaults(prior["config"])
    if config_fingerprint(prior_config) != record["config_fingerprint"]:
        changes = changed_keys(prior_config, record["config"])
        problems.append("the config changed: " + "; ".join(changes))
    planned = generations(prior)[-1]["plan_fingerprint"]  # the latest manifest's own plan
    if not problems and same_manifest and planned != record["plan"]["fingerprint"]:
        problems.append(
            f"the plan changed: fingerprint {planned[:16]} -> "
            f"{record['plan']['fingerprint'][:16]} (planner version?)"
        )
    if problems:
        grow = (
            " If the new manifest only adds rows, rerun with --append to plan them into new shards."
            if manifest_changed and same_manifest
            else ""
        )
        raise RunRefused(
            f"{output} already holds a different run: "
            + " and ".join(problems)
            + ". Rerun with --restart to delete it and start over, or choose another --output."
            + grow
        )


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the defaults of keys added since it was written (a key this version added, at
    its default, changes nothing); the stored dict itself when it no longer validates."""
    try:
        return RunConfig.model_validate(config).to_dict()
    except Exception:  # noqa: BLE001 - compared as stored; the differences get named
        return config


def finalize(store, unfinished: list[tuple[int, str]], since_s: float) -> None:
    """Complete any shard whose commit was interrupted after its marker, then delete what attempts
    left behind: this run's attempts that ended without a result, and orphans older than this run
    (from crashed earlier runs). Attempts that might still be writing for another driver are younger
    than this run and not ours, so they are left alone: one driver per output at a time."""
    from pipeline.storage.layout import attempt_prefix

    completed = store.finalize()
    if completed:
        log.info("finalize: completed the interrupted publish of shards %s", completed)
    markers = store.committed_shards()
    doomed = []
    for shard_id, attempt_id in unfinished:
        marker = markers.get(shard_id)
        if marker is None or marker.attempt_id != attempt_id:
            doomed += [info.key for info in store.list(attempt_prefix(shard_id, attempt_id))]
    store.delete(doomed)
    removed = store.remove_orphans(older_than=timedelta(seconds=since_s))
    if doomed or removed:
        log.info("finalize: removed %d objects of unfinished attempts", len(doomed) + len(removed))


def write_plan(store, plan) -> None:
    with tempfile.TemporaryDirectory(prefix="stylegen-plan-") as folder:
        store.put_file(PLAN_KEY, plan.write(folder))


def clear_output(store) -> None:
    """--restart: delete the old run's own files (the keys `stylegen run` writes), and only when its
    run.json is a stylegen run record; any other file under the output stays."""
    from pipeline.storage.layout import is_run_output_key

    objects = store.list("")
    if not objects:
        return
    try:
        record = read_run_record(store)
    except RunRefused:
        record = None
    if not is_run_record(record):
        raise RunRefused(
            f"--restart deletes only a stylegen run, but {store.url(RUN_KEY)} is not a stylegen run record "
            f"(or is missing), so nothing under {store.uri} was deleted; choose another --output"
        )
    ours = [info.key for info in objects if is_run_output_key(info.key) and info.key != RUN_KEY]
    store.delete(ours)
    store.delete([RUN_KEY])  # last: an interrupted restart can still be restarted
    store.abort_stale_multipart_uploads(older_than=timedelta(0))


# --- execution -------------------------------------------------------------------------------------


def execute(
    store,
    config: RunConfig,
    pending: dict[int, int],
    progress: RunProgress,
    failed_errors: dict[int, list[str]],
    unfinished: list[tuple[int, str]],
    placement: Placement,
    stop: StopSignals | None = None,
) -> PoolStats:
    """Run the pending shards on an elastic pool of generator actors (see actors/pool.py)."""
    import ray

    from actors.metrics import RunMetrics
    from actors.pool import (
        DeadlinePolicy,
        GeneratorPool,
        SchedulerHooks,
        ShardScheduler,
        detect_gpus,
        start_ray,
    )

    execution = config.execution
    wanted = placement.actors or execution.max_actors
    gpus_per_actor, address = placement.gpus_per_actor, placement.address
    known_models = set((read_run_record(store) or {}).get("models") or {})
    local_gpus = None
    if not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        # Logical GPUs on a CPU machine, so the same scheduling code runs everywhere.
        local_gpus = detect_gpus() or math.ceil((wanted or 1) * gpus_per_actor)
    started_ray = start_ray(address, local_gpus)
    if stop is not None:
        stop.install()  # ray.init put its own SIGTERM handlers in place of ours
    pool = metrics = None
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        size = pool_target(wanted, gpus_per_actor, cluster_gpus, len(pending))
        if wanted and size < wanted:
            progress.console.print(
                f"running {size} actor(s), not {wanted}: only {len(pending)} shard(s) left to run and an "
                "actor without a shard would only load models",
                markup=False,
            )
        pool = GeneratorPool(
            config.model_dump_json(), store.uri, size, gpus_per_actor, execution.torch_threads
        )
        log.info(
            "pool: %d actors x %g GPU requested (cluster GPUs now: %g)", size, gpus_per_actor, cluster_gpus
        )
        if size * gpus_per_actor > cluster_gpus + 1e-9:
            progress.console.print(
                f"requesting {size} actors x {gpus_per_actor:g} GPU; the cluster has {cluster_gpus:g} GPUs "
                "now: the rest stay pending until GPU nodes join (an autoscaler adds them)",
                highlight=False,
                soft_wrap=True,
            )
        metrics = RunMetrics(store.uri)

        def committed(shard_id: int, result: ShardResult) -> None:
            record_models(store, result.models, known_models)
            progress.shard_done(shard_id, result.rows, result.kept, result.rejected, result.failed)
            metrics.shard_committed(result)
            log.info(
                "shard %d committed (attempt %s, %s): %d kept, %d rejected, %d failed in %.1f s on node %s",
                shard_id,
                result.attempt_id,
                "ours" if result.committed else "an earlier attempt's",
                result.kept,
                result.rejected,
                result.failed,
                result.seconds,
                str(result.node_id)[:12],
            )

        def failed(shard_id: int, errors: list[str]) -> None:
            failed_errors[shard_id] = errors
            try:
                commit_failed_shard(store, config, shard_id, errors, f"failed-{uuid.uuid4().hex[:12]}")
            except Exception as error:  # the driver never dies of one shard: the rerun redoes it
                log.error(
                    "shard %d: could not record its rows as failed (%s: %s); it stays uncommitted and "
                    "the rerun redoes it",
                    shard_id,
                    type(error).__name__,
                    error,
                )
                return
            rows = pending[shard_id]
            progress.shard_done(shard_id, rows, 0, 0, rows)
            metrics.shard_failed(rows)
            log.error("shard %d recorded as failed (all %d rows): %s", shard_id, rows, " | ".join(errors))

        def event(message: str) -> None:
            log.warning(message)
            progress.console.print(message, style="dim", markup=False)

        def actors_changed(ready: int, waiting: int) -> None:
            progress.actors(ready, waiting)
            metrics.actors(ready, waiting)

        hooks = SchedulerHooks(
            on_committed=committed,
            on_failed=failed,
            on_progress=progress.images_in_flight,
            on_event=event,
            on_actors=actors_changed,
        )
        policy = DeadlinePolicy(
            execution.deadline_factor, execution.first_deadline_s, execution.min_deadline_s
        )
        scheduler = ShardScheduler(
            pool,
            policy,
            execution.max_attempts,
            execution.actor_start_timeout_s,
            hooks,
            capacity_timeout_s=execution.capacity_timeout_s,
            drain_s=execution.drain_s,
            should_stop=lambda: stop is not None and stop.requested,
            storage_outage_s=execution.storage_outage_s,
            isolate_culprits=execution.isolate_culprits,
        )
        try:
            scheduler.run(pending)
        finally:
            unfinished += scheduler.unfinished_attempts
        progress.stop()  # the bar is done; shutting the pool down takes a moment
        return PoolStats(size, scheduler.actor_timeline, scheduler.stopped)
    finally:
        if pool is not None:
            pool.shutdown()
        if metrics is not None:
            metrics.actors(0, 0)  # the pool is gone (dashboards would otherwise show its last counts)
        if started_ray:
            ray.shutdown()


def pool_target(wanted: int | None, gpus_per_actor: float, cluster_gpus: float, shards: int) -> int:
    """How many actors to request: `wanted` (--actors / execution.max_actors), else one per GPU the
    cluster has now; never more than there are shards (an actor without a shard would only load)."""
    from actors.pool import PoolError

    size = wanted or int(cluster_gpus / gpus_per_actor + 1e-9)
    if size < 1:
        raise PoolError(
            f"this Ray cluster has no GPUs now ({cluster_gpus:g}); pass --actors N (or set "
            "execution.max_actors) to request N actors: they wait for GPU nodes, which an autoscaler adds"
        )
    return min(size, shards)


# --- helpers ---------------------------------------------------------------------------------------


def _is_local(store) -> bool:
    return "://" not in store.uri


def _local_log_path(store, key: str) -> Path:
    if _is_local(store):
        return Path(store.url(key))
    return Path(tempfile.gettempdir()) / f"stylegen-{os.getpid()}-{Path(key).name}"
