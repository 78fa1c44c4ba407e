"""The end of a run, after its last shard: complete interrupted publishes and delete what attempts left
behind (`finalize`), then the files that describe the whole output: the dataset card and report.html
(each a warning when it fails: the data is complete before they are written)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from pipeline.run.summary import RunSummary
from pipeline.storage.layout import REPORT_KEY

log = logging.getLogger("stylegen.driver")


def finalize(store, unfinished: Iterable[tuple[int, str]], since_s: float) -> None:
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
