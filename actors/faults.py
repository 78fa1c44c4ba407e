"""What a failed shard attempt means for the run, without Ray (the scheduler and its Blame ask these):

- `is_storage_error`: the attempt failed on storage or the local disk (a full disk, a read-only
  filesystem, S3 unreachable), not on its rows. Such an attempt is not charged to the shard: the
  scheduler waits (`StorageOutage`, exponential back-off) and resubmits; if storage keeps failing for
  `execution.storage_outage_s`, the run stops with `StorageDown`, nothing recorded failed, so the
  rerun redoes exactly the shards that were not committed.
- `CulpritSearch`: a shard that failed all its attempts (a hang past the deadline, a crashed actor)
  is rerun one row at a time (isolation mode, see ShardWorker.run_shard); each attempt that dies
  names the row that was running, which is then recorded failed while the others run again, until
  an attempt commits. Only the culprits are recorded failed, never the shard's good rows.
"""

from __future__ import annotations

import time

from pipeline.storage.objects import StorageError


class StorageDown(StorageError):
    """Storage kept failing for longer than the run waits; the message says what to do."""


def is_storage_error(error: BaseException | None) -> bool:
    """An error of the store or the local filesystem (not of a row: those never leave the worker)."""
    return isinstance(error, StorageError | OSError)


class StorageOutage:
    """Back-off while storage fails: 1, 2, 4 ... s (at most `max_delay_s`) between resubmissions;
    `failed` raises StorageDown once the failures have lasted `give_up_after_s` without a success."""

    def __init__(self, give_up_after_s: float, first_delay_s: float = 1.0, max_delay_s: float = 30.0):
        self.give_up_after_s = give_up_after_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.since: float | None = None
        self.delay = first_delay_s

    def failed(self, error: str) -> float:
        """Record a storage failure; the seconds to wait before resubmitting (or StorageDown)."""
        now = time.monotonic()
        if self.since is None:
            self.since, self.delay = now, self.first_delay_s
        else:
            self.delay = min(self.delay * 2, self.max_delay_s)
        if now - self.since >= self.give_up_after_s:
            raise StorageDown(
                f"storage has been failing for {now - self.since:.0f} s (last: {error}); the run stopped "
                "with nothing recorded failed: rerun the same command to resume once storage is back"
            )
        return self.delay

    def recovered(self) -> None:
        self.since = None


class CulpritSearch:
    """The rows found guilty so far, per shard in isolation mode (uid -> the reason recorded)."""

    def __init__(self):
        self.culprits: dict[int, dict[str, str]] = {}

    def isolating(self, shard_id: int) -> dict[str, str] | None:
        return self.culprits.get(shard_id)

    def start(self, shard_id: int) -> None:
        self.culprits[shard_id] = {}

    def blame(self, shard_id: int, running: str | None, error: str) -> str | None:
        """An isolation attempt died while `running` (a uid) ran: record it; the uid, or None when
        no new culprit can be named (then the shard cannot be narrowed down any further)."""
        found = self.culprits[shard_id]
        if running is None or running in found:
            return None
        found[running] = f"this row failed its shard every time it ran ({error}); isolated and not retried"
        return running
