"""The shards of a scheduler's run as the driver tracks them: planned rows, the queue of shards to
submit, attempts made per shard, shards waiting out a storage back-off, and the attempts that ended
without a result. The scheduler, actor health and blame all put shards back here."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from actors.pool import Attempt


class ShardQueue:
    def __init__(self):
        self.rows: dict[int, int] = {}  # shard id -> planned rows, of the current run
        self.pending: deque[int] = deque()  # to submit, next first
        self.tries: dict[int, int] = defaultdict(int)  # attempts that count (uncharged ones are taken back)
        self.later: list[tuple[float, int]] = []  # (when, shard id): resubmissions after a back-off
        # (shard id, attempt id) of attempts that ended without a result: their uploads are orphans
        self.unfinished_attempts: list[tuple[int, str]] = []

    def start(self, shard_rows: dict[int, int]) -> None:
        """A run of these shards (shard id -> planned rows) starts: all of them are to submit."""
        self.rows = shard_rows
        self.pending = deque(sorted(shard_rows))

    def add(self, shard_rows: dict[int, int]) -> None:
        """More shards for this run (shard id -> planned rows), after those queued."""
        self.rows.update(shard_rows)
        self.pending.extend(sorted(shard_rows))

    def release_due(self) -> None:
        """Shards whose back-off is over go to the end of the queue."""
        now = time.monotonic()
        due = [item for item in self.later if item[0] <= now]
        for item in due:
            self.later.remove(item)
            self.pending.append(item[1])

    def ended_without_result(self, attempt: Attempt) -> None:
        self.unfinished_attempts.append((attempt.shard_id, attempt.attempt_id))

    def resubmit_uncharged(self, shard_id: int) -> None:
        """Next in the queue, and the attempt it lost does not count."""
        self.tries[shard_id] -= 1
        self.pending.appendleft(shard_id)

    def resubmit_after(self, shard_id: int, delay_s: float) -> None:
        """Back in the queue once `delay_s` has passed; the attempt it lost does not count."""
        self.tries[shard_id] -= 1
        self.later.append((time.monotonic() + delay_s, shard_id))
