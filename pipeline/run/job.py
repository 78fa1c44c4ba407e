"""The whole of `stylegen run` (and what `stylegen demo` calls): plan -> run.json -> resume -> schedule
-> finalize.

1. read and plan the manifest (pipeline/run/plan.py); the first run writes `run.json` (config, its
   fingerprint, the manifest and plan fingerprints, versions; never a credential), then `plan.parquet`;
2. a later run of the same output compares itself with `run.json` and refuses a changed manifest or
   config, naming what changed (pipeline/run/resume.py; `restart=True` deletes the old output first);
3. one LIST of the commit markers gives the shards already done; the rest run on the Ray actor pool
   (pipeline/run/execute.py), with deadlines, retries and failed-shard records;
4. finalize (pipeline/run/finalize.py): remove orphaned attempt objects, then write `summary.json`, the
   dataset card and `report.html`, and print the summary table.
The log of each run goes to `logs/run-<UTC timestamp>.log` under the output (for s3:// every
`execution.log_upload_s` during the run, and at its end). SIGTERM/SIGINT stop it gracefully
(pipeline/run/stop.py): no new shards, commits in progress drain, the log is uploaded, RunStopped is raised.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from manifests.cli_format import make_console
from pipeline.json_format import pretty_json
from pipeline.output.accounting import sample_counts
from pipeline.output.run_record import retry_shards, shard_sizes, store_run_record
from pipeline.run.execute import Executed, Placement, execute
from pipeline.run.finalize import finalize, write_card, write_run_report
from pipeline.run.lease import LeaseHeld, OutputLease
from pipeline.run.logs import PeriodicLogUpload
from pipeline.run.plan import plan_run, write_plan
from pipeline.run.preflight import check_config, check_staged_models
from pipeline.run.progress import RunProgress, close_run_log, open_run_log, summary_table
from pipeline.run.quota import QuotaTracker, plan_reseeds
from pipeline.run.resume import (
    prepare_output,
    prepare_retry,
    read_run_record,
    refuse_conflicting_flags,
    refuse_foreign_output,
)
from pipeline.run.stop import RunStopped, StopSignals
from pipeline.run.summary import RunSummary, failed_rows_note, nothing_to_do, quota_note
from pipeline.run_config import RunConfig
from pipeline.storage.layout import CARD_KEY, PLAN_KEY, REPORT_KEY, SUMMARY_KEY
from pipeline.storage.layout import log_key as run_log_key
from pipeline.storage.ledger import CommitView

log = logging.getLogger("stylegen.driver")


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
    refuse_conflicting_flags(restart=restart, append=append, retry_failed=retry_failed)
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
    # Reads only: nothing, not even a lease, is written into an output that is not ours.
    refuse_foreign_output(store, restart)
    execution = config.execution
    with OutputLease(store, execution.lease_ttl_s, wait_s=execution.wait_for_lease_s) as lease:
        prior = prepare_output(store, record, restart, append=append, plan=plan)
        commits = CommitView(store)  # the output is ours (or empty) from here: the one listing of its markers
        if retry_failed:
            prior = prepare_retry(store, prior, commits.markers)
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
                manifest=manifest,
                store=store,
                config=config,
                record=prior or record,
                resuming=prior is not None,
                commits=commits,
                lease=lease,
                placement=placement,
                console=console,
                live=live,
                started=started,
                stop=stop,
                log_key=log_key,
                log_path=log_path,
            )
            summary.log_uri = store.url(log_key)
            if not summary.shards_committed and summary.shards_resumed >= summary.shards_planned:
                # A rerun of a finished run: summary.json, report.html and the card keep the run that did
                # the work.
                summary.report_uri = store.url(REPORT_KEY) if store.exists(REPORT_KEY) else None
                summary.card_uri = store.url(CARD_KEY) if store.exists(CARD_KEY) else None
                console.print(nothing_to_do(summary), markup=False)
                if summary.quota is not None:
                    console.print(quota_note(summary.quota, config.quota.per), markup=False, highlight=False)
                return summary
            summary.card_uri = write_card(store)
            summary.report_uri = write_run_report(store, summary)
            store.put_bytes(SUMMARY_KEY, pretty_json(summary.to_dict()))
            console.print(summary_table(summary))
            if summary.quota is not None:
                console.print(quota_note(summary.quota, config.quota.per), markup=False, highlight=False)
            if summary.failed:
                console.print(failed_rows_note(store, summary, commits.markers), markup=False)
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


def _run(
    *,
    manifest: str,
    store,
    config: RunConfig,
    record: dict[str, Any],
    resuming: bool,
    commits: CommitView,
    lease: OutputLease,
    placement: Placement,
    console: Console,
    live: bool | None,
    started: float,
    stop: StopSignals,
    log_key: str,
    log_path: Path,
) -> RunSummary:
    """Run the shards `record` (the output's run.json) plans that are not committed yet."""
    sizes = shard_sizes(record)
    log.info("run %s -> %s: %d rows in %d shards", manifest, store.uri, sum(sizes.values()), len(sizes))
    if resuming:
        log.info("resuming: run.json matches (config %s)", record["config_fingerprint"][:12])

    done = dict(commits.markers)
    pending = {shard_id: rows for shard_id, rows in sizes.items() if shard_id not in done}
    quota = None
    if config.quota is not None:
        quota = QuotaTracker.load(store, record, done, config.quota)
        if not pending and quota.ready:  # stopped between rounds: the next round first
            record, pending = plan_reseeds(store, quota)
            sizes = shard_sizes(record)
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
    executed = Executed()
    if pending:
        from actors.ray_output import ray_output_to

        stop.interruptible = False  # from here on the scheduler drains on a signal
        with ray_output_to(log_path, console), progress:
            executed = execute(
                store,
                config,
                pending,
                progress,
                placement,
                commits=commits,
                log_key=log_key,
                stop=stop,
                lost_lease=lease.lost,
                quota=quota,
            )
    commits.flush()
    if lease.lost.is_set():
        raise LeaseHeld(
            f"{store.uri}: another driver took over this output's lease, so this one stopped after "
            f"{progress.done_shards - len(done)} shard(s); see the log, and rerun the same command to resume"
        )
    pool = executed.pool
    if pool.stopped or (quota is not None and quota.ready and stop.requested):  # a round left unplanned
        raise RunStopped(
            f"stopped by {stop.signal_name}: {progress.done_shards} of {len(sizes)} shards committed "
            f"({progress.done_shards - len(done)} by this run); rerun the same command to resume",
            stop.exit_code,
        )
    finalize(store, commits.markers, executed.unfinished, since_s=time.monotonic() - started)
    if quota is not None:  # reseeding planned more shards while it ran
        record = read_run_record(store)
        sizes = shard_sizes(record)
    final = commits.markers
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
        failed_shard_errors=executed.failed_errors,
        actors_peak=pool.peak(),
        actors_final=pool.final(),
        actor_timeline=[(round(t - started, 3), ready, waiting) for t, ready, waiting in pool.timeline],
        quota=[outcome.to_dict() for outcome in quota.outcomes()] if quota is not None else None,
    )


def _is_local(store) -> bool:
    return "://" not in store.uri


def _local_log_path(store, key: str) -> Path:
    if _is_local(store):
        return Path(store.url(key))
    return Path(tempfile.gettempdir()) / f"stylegen-{os.getpid()}-{Path(key).name}"
