"""Each run of an output on its own: an output interrupted and resumed has had several runs, and one
throughput over all of them (idle time between runs included) describes none of them.

Every run writes `logs/run-<UTC start>.log`, so the log names give the runs and their starts. One
driver works on an output at a time, so a commit marker belongs to the last run started before its
`committed_at`. Each run records its pool (target actors, GPUs per actor) in run.json's `runs`, under
its log key (pipeline/run/run_json.py writes it); the latest run's wall time and actors come from its
summary (summary.json, or the summary the driver hands to the report it writes). An output written
before runs recorded their pool has only its logs: for its runs the pool is read from the log's `pool:`
line, as it was then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.output.run_record import recorded_pools

LOG_PREFIX = "logs/"
_LOG_NAME = re.compile(r"run-(\d{8}T\d{6}\d{6}Z)\.log$")
_POOL_LINE = re.compile(r"stylegen\.driver: pool: (\d+) actors x ([\d.]+) GPU")


@dataclass
class RunStats:
    started: datetime
    log_key: str
    shards: int = 0  # shards this run committed
    images: int = 0  # images it generated (kept + rejected) in them
    last_commit: datetime | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    wall_s: float | None = None  # the driver's own wall time (the latest run's summary)

    @property
    def seconds(self) -> float | None:
        """Wall time when the summary knows it, else from the run's start to its last commit."""
        if self.wall_s is not None:
            return self.wall_s
        if self.last_commit is None:
            return None
        return max((self.last_commit - self.started).total_seconds(), 0.0)

    @property
    def images_per_s(self) -> float | None:
        seconds = self.seconds
        return self.images / seconds if seconds else None


def log_start(key: str) -> datetime | None:
    """The UTC start of the run that wrote log `key` (logs/run-20260101T100000123456Z.log)."""
    found = _LOG_NAME.search(key)
    if not found:
        return None
    return datetime.strptime(found.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)


def run_history(
    store, markers: dict, latest: dict[str, Any] | None, record: dict[str, Any] | None
) -> list[RunStats]:
    """One RunStats per run, oldest first. `latest`: the newest run's summary (its log may not be in
    the store yet: an S3 output gets it when the run ends); `record`: the output's run.json."""
    keys = {info.key for info in store.list(LOG_PREFIX)}
    latest_key = None
    if latest and latest.get("log_uri"):
        latest_key = LOG_PREFIX + str(latest["log_uri"]).rsplit("/", 1)[-1]
        keys.add(latest_key)
    runs = sorted(
        (RunStats(start, key) for key in keys if (start := log_start(key)) is not None),
        key=lambda run: run.started,
    )
    if not runs:
        return []
    attribute_commits(runs, markers)
    pools = recorded_pools(record)
    for run in runs:
        if run.log_key == latest_key:
            run.actors, run.gpus_per_actor = latest.get("actors"), latest.get("gpus_per_actor")
            run.wall_s = latest.get("elapsed_s")
        elif run.log_key in pools:
            run.actors, run.gpus_per_actor = pools[run.log_key]
        elif run.shards:  # a run of an older stylegen: only its log names its pool
            run.actors, run.gpus_per_actor = _logged_pool_size(store, run.log_key)
    return runs


def attribute_commits(runs: list[RunStats], markers: dict) -> None:
    """Give each commit marker to the last run started at or before it (the first run takes any older)."""
    for marker in markers.values():
        when = parse_time(marker.committed_at)
        if when is None:
            continue
        # Markers carry whole seconds; a run started within that second still owns its commits.
        owner = runs[0]
        for run in runs:
            if run.started.replace(microsecond=0) <= when:
                owner = run
        summary = marker.summary
        owner.shards += 1
        owner.images += int(summary.get("kept", 0)) + int(summary.get("rejected", 0))
        owner.last_commit = when if owner.last_commit is None else max(owner.last_commit, when)


def _logged_pool_size(store, key: str) -> tuple[int | None, float | None]:
    """The run's `pool: N actors x G GPU` line (near the top of its log), if the log is readable: for
    runs that did not record their pool in run.json (written before they did)."""
    try:
        with store.open(key) as file:
            head = file.read(1 << 16).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a missing or unreadable log only leaves the column empty
        return None, None
    found = _POOL_LINE.search(head)
    return (int(found.group(1)), float(found.group(2))) if found else (None, None)


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
