"""Who pays for a failed shard attempt.

An attempt that failed is charged to its shard: retried until it failed `max_attempts` times, then rerun
one row at a time to isolate the rows that cause it (actors/faults.py, CulpritSearch), and handed back
as failed only when no row can be blamed. Not charged, but resubmitted: an attempt that failed on
storage (after a back-off; the run stops if storage stays down), and one whose actor died because of
another attempt. When an actor dies with several shards in flight, `assign` decides which one did it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from actors.faults import CulpritSearch, StorageOutage
from actors.pool import Attempt
from actors.shard_queue import ShardQueue


class Blame:
    def __init__(
        self,
        shards: ShardQueue,
        search: CulpritSearch | None,
        outage: StorageOutage,
        max_attempts: int,
        on_event: Callable[[str], None],
        on_failed: Callable[[int, list[str]], None],
    ):
        self.shards = shards
        self.search = search
        self.outage = outage
        self.max_attempts = max_attempts
        self._on_event = on_event
        self._on_failed = on_failed
        self._errors: dict[int, list[str]] = defaultdict(list)
        self._unstarted: dict[int, int] = defaultdict(int)  # isolation attempts lost before any row

    def storage_failed(self, attempt: Attempt, error: str) -> None:
        """A storage failure is not the shard's fault: resubmit it after a back-off, uncharged (and
        stop the run with StorageDown once storage has failed for too long)."""
        delay = self.outage.failed(f"shard {attempt.shard_id}: {error}")
        self._on_event(
            f"shard {attempt.shard_id}: storage failed ({error}); not charged, retrying in {delay:.0f} s"
        )
        self.shards.resubmit_after(attempt.shard_id, delay)

    def charge(self, attempt: Attempt, error: str) -> None:
        shard_id = attempt.shard_id
        errors = self._errors[shard_id]
        errors.append(error)
        if attempt.culprits is not None:  # an isolation attempt died: blame the row that was running
            culprit = self.search.blame(shard_id, attempt.running, error)
            if culprit is not None:
                self._on_event(f"shard {shard_id}: row {culprit} isolated ({error}); rerunning the others")
                self.shards.pending.appendleft(shard_id)
                return
            if attempt.running is None and attempt.started_at is None and self._unstarted[shard_id] < 3:
                # No row was announced, so none caused it: the actor was gone (restarting) before the
                # shard began. Resubmitted, a bounded number of times.
                self._unstarted[shard_id] += 1
                self._on_event(f"shard {shard_id}: {error} before its first row; resubmitted")
                self.shards.pending.appendleft(shard_id)
                return
            self._on_event(f"shard {shard_id}: no row to blame for {error}; giving up")
            self._on_failed(shard_id, list(errors))
        elif len(errors) >= self.max_attempts and self.search is not None:
            self._on_event(
                f"shard {shard_id}: failed {len(errors)} times ({error}); rerunning it one row at a time "
                "to isolate the rows that cause it"
            )
            self.search.start(shard_id)
            self.shards.pending.appendleft(shard_id)
        elif len(errors) >= self.max_attempts:
            self._on_event(f"shard {shard_id}: failed {len(errors)} times, giving up: {error}")
            self._on_failed(shard_id, list(errors))
        else:
            self._on_event(f"shard {shard_id}: {error}; retrying")
            self.shards.pending.appendleft(shard_id)

    def assign(self, failed: Attempt) -> None:
        """An actor died with shards in flight. The one it was generating caused it; one waiting to
        start or already uploading (all images done) is resubmitted without being charged. When the
        heartbeats cannot tell (none seen yet), every attempt is charged."""
        if failed.deadline_exceeded or failed.collateral:
            return
        same_instance = [failed] + [a for a in failed.slot.attempts if a.incarnation == failed.incarnation]
        undecided = [a for a in same_instance if not (a.deadline_exceeded or a.collateral)]
        generating = [
            a for a in undecided if a.started_at is not None and a.images_done < self.shards.rows[a.shard_id]
        ]
        if generating:
            for attempt in undecided:
                attempt.collateral = attempt not in generating
