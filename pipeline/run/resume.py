"""Whether this run of an output is a new run, a resume, an append or a retry, decided from its run.json
before anything is written: a different run (changed manifest or config) is refused naming what changed,
and nothing is written or deleted where no stylegen run record proves the output is ours."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from pipeline.errors import UserError
from pipeline.output.run_record import (
    READABLE_FORMATS,
    RUN_FORMAT,
    RunRecordError,
    generations,
    is_run_record,
    load_run_record,
    shard_sizes,
)
from pipeline.output.shard_tables import failed_uids
from pipeline.run_config import RunConfig, changed_keys, config_fingerprint
from pipeline.storage.layout import LEASE_KEY, RUN_KEY

log = logging.getLogger("stylegen.driver")


class RunRefused(UserError, RuntimeError):
    """The output holds a different run (changed manifest or config), or --restart would delete
    something that is not a stylegen output."""

    exit_code = 2


def refuse_conflicting_flags(*, restart: bool, append: bool, retry_failed: bool) -> None:
    """--restart (start over), --append (grow the run) and --retry-failed (regenerate its failed rows) each
    change the output in their own way: two of them together are refused before anything is read."""
    given = [
        name
        for name, on in (("--restart", restart), ("--append", append), ("--retry-failed", retry_failed))
        if on
    ]
    if len(given) > 1:
        raise RunRefused(
            f"{' and '.join(given)} cannot be used together: --restart starts the run over, --append grows "
            "it, --retry-failed regenerates its failed rows; give one (nothing was read, written or deleted)"
        )


def refuse_foreign_output(store, restart: bool) -> dict[str, Any] | None:
    """The output's run record (None: there is none); refuses, reading only, an output that no stylegen
    run record proves is ours: a new run starts only in an empty folder or prefix (the whole output is
    listed only when it has no run.json), and --restart deletes only a stylegen run. Runs before the
    driver takes the output's lease, so a refused output gets nothing written, not even the lease."""
    try:
        prior = read_run_record(store)
    except RunRefused:
        if not restart:
            raise
        prior = None
    if restart and prior is not None and is_run_record(prior):
        return prior
    if prior is None and not [info for info in store.list("") if info.key != LEASE_KEY]:
        return None
    if restart:
        raise RunRefused(
            f"--restart deletes only a stylegen run, but {store.url(RUN_KEY)} is not a stylegen run record "
            f"(or is missing), so nothing under {store.uri} was deleted; choose another --output"
        )
    if prior is None:
        raise RunRefused(
            f"{store.uri} is not empty and has no {RUN_KEY}: it is not a stylegen output, and a run "
            "could overwrite its files; choose an empty or new --output"
        )
    return prior


def prepare_output(
    store, record: dict[str, Any], restart: bool, *, append: bool = False, plan=None
) -> dict[str, Any] | None:
    """The output's earlier run record when this run resumes it, else None (a new run). Refuses a
    different run, and any output that no stylegen run record proves is ours: --restart deletes only
    such an output's own files, and a new run only starts in an empty folder or prefix. With `append`,
    a bigger manifest is planned into new shards after the run's (the record returned is the updated
    one); a manifest that drops or changes rows of the run is refused, naming them."""
    prior = refuse_foreign_output(store, restart)
    if restart:
        clear_output(store)
        return None
    if prior is None:
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


def prepare_retry(store, prior: dict[str, Any] | None, markers: dict[int, Any]) -> dict[str, Any]:
    """--retry-failed: the run record with the failed rows planned into new shards (pipeline.run.retry);
    refused unless the output holds a finished run. `markers`: the output's committed shards."""
    from pipeline.run.retry import plan_retry

    if prior is None:
        raise RunRefused(f"--retry-failed: {store.uri} holds no run to retry; run it first")
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


def clear_output(store) -> None:
    """--restart: delete the old run's own files (the keys `stylegen run` writes), and only when its
    run.json is a stylegen run record; any other file under the output stays."""
    from pipeline.storage.layout import is_run_output_key

    if refuse_foreign_output(store, restart=True) is None:
        return  # empty (but for this driver's lease)
    objects = store.list("")
    ours = [info.key for info in objects if is_run_output_key(info.key) and info.key != RUN_KEY]
    store.delete(ours)
    store.delete([RUN_KEY])  # last: an interrupted restart can still be restarted
    store.abort_stale_multipart_uploads(older_than=timedelta(0))
