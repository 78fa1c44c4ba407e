"""The end of a run, after its last shard: complete interrupted publishes and delete what attempts left
behind (`finalize`, from one listing of `_attempts/`, never of the shards), then the files that describe
the whole output: the dataset card and report.html (each a warning when it fails: the data is complete
before they are written)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from pipeline.run.summary import RunSummary
from pipeline.storage.commit import sweep_attempts

log = logging.getLogger("stylegen.driver")


def finalize(
    store, markers: Mapping[int, Any], unfinished: Iterable[tuple[int, str]], since_s: float
) -> None:
    """Complete any shard whose publish was interrupted after its marker, then delete what attempts left
    behind: this run's attempts that ended without a result, and dead attempts older than this run (from
    crashed earlier runs), from one listing of `_attempts/` (pipeline.storage.commit.sweep_attempts;
    `markers`: the run's view of the committed shards). Attempts that might still be writing for another
    driver are younger than this run and not ours, so they are left alone: one driver per output."""
    sweep = sweep_attempts(store, markers, timedelta(seconds=since_s), dead=unfinished)
    if sweep.completed:
        log.info("finalize: completed the interrupted publish of shards %s", sweep.completed)
    if sweep.removed:
        log.info("finalize: removed %d objects of unfinished attempts", len(sweep.removed))


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
    from pipeline.report.build import store_report

    try:
        return store_report(store, latest_run=summary.to_dict() if summary is not None else None)
    except Exception as error:
        log.warning(
            "report.html not written (%s: %s); `stylegen report` can retry", type(error).__name__, error
        )
        return None
