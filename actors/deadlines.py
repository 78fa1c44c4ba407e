"""How long a shard attempt may run, and what happens to an actor whose shard runs past it.

`DeadlinePolicy` gives the allowance. `ShardDeadlines` checks the attempts in flight on each turn of the
scheduler's loop: an actor with a late shard, or whose shards have not started for
`actor_start_timeout_s`, is killed (Ray restarts it), and its attempts are marked so that only the late
ones are charged; the others were collateral.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

from actors.health import ActorHealth
from actors.pool import Attempt, GeneratorPool
from actors.shard_queue import ShardQueue


class DeadlinePolicy:
    """Shard deadline = factor x observed seconds per image x rows, floored; a fixed allowance until
    the first shards have finished (those include warm-up)."""

    def __init__(self, factor: float, first_deadline_s: float, min_deadline_s: float):
        self.factor = factor
        self.first_deadline_s = first_deadline_s
        self.min_deadline_s = min_deadline_s
        self._per_image: deque[float] = deque(maxlen=64)

    def observe(self, rows: int, seconds: float) -> None:
        if rows > 0:
            self._per_image.append(seconds / rows)

    def deadline(self, rows: int) -> float:
        if not self._per_image:
            return self.first_deadline_s
        return max(self.min_deadline_s, self.factor * statistics.median(self._per_image) * max(rows, 1))


class ShardDeadlines:
    def __init__(
        self,
        pool: GeneratorPool,
        policy: DeadlinePolicy,
        shards: ShardQueue,
        health: ActorHealth,
        actor_start_timeout_s: float,
        on_event: Callable[[str], None],
    ):
        self.pool = pool
        self.policy = policy
        self.shards = shards
        self.health = health
        self.actor_start_timeout_s = actor_start_timeout_s
        self._on_event = on_event

    def enforce(self) -> None:
        now = time.monotonic()
        for slot in self.pool.slots:
            if not slot.usable or not slot.attempts:
                continue
            late = [
                a for a in slot.attempts if a.started_at is not None and now - a.started_at > self.deadline(a)
            ]
            stuck = not any(a.started_at for a in slot.attempts) and (
                now - slot.idle_since > self.actor_start_timeout_s
            )
            if not late and not stuck:
                continue
            for attempt in slot.attempts:
                attempt.deadline_exceeded = attempt in late or stuck
                attempt.collateral = not attempt.deadline_exceeded
                if attempt in late:  # (in isolation mode: the one row's deadline)
                    row_deadline = attempt.culprits is not None
                    attempt.deadline_s = self.policy.deadline(1) if row_deadline else self.deadline(attempt)
                elif stuck:
                    attempt.deadline_s = self.actor_start_timeout_s
            why = f"shard {late[0].shard_id} past its deadline" if late else "no shard started"
            self._on_event(f"actor {slot.index}: killed ({why}); Ray restarts it")
            self.health.restart(slot, now)

    def deadline(self, attempt: Attempt) -> float:
        """Seconds the attempt may run; in isolation mode, each row gets one row's deadline (counted
        from when it started), so the deadline names the row that hangs."""
        if attempt.culprits is None:
            return self.policy.deadline(self.shards.rows[attempt.shard_id])
        return (attempt.progress_at or attempt.started_at) - attempt.started_at + self.policy.deadline(1)
