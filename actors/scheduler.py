"""The shard scheduler: the only place that waits on Ray.

`ShardScheduler.run` is the `ray.wait` loop. Shards go only to actors that answered their probe
(ready); an actor whose node joins gets work on the next turn of the loop. Every wait has a timeout; a
shard that runs past its deadline gets its actor killed (Ray restarts it) and is resubmitted; a shard
that failed `max_attempts` times is rerun one row at a time to isolate the rows that cause it
(actors/faults.py) and handed back as failed only when no row can be blamed; an attempt that failed
on storage is not charged but resubmitted after a back-off, and the run stops if storage stays down.
A lost node's shards are resubmitted without being charged, and Ray restarts its actors at once
(`max_restarts=-1`): pending until capacity returns, with no per-actor wait. An actor waiting for a
GPU has no deadline, one loading models has `actor_start_timeout_s`; with no actor ready for
`capacity_timeout_s` the run stops (CapacityTimeout) and a rerun resumes. A stop request drains: no
new shards, commits in progress get `drain_s`. It never loops forever, and never waits for a pending
actor once nothing is left to do.

The loop submits and collects here; its collaborators keep the rest: the shard queue
(actors/shard_queue.py), the heartbeats (actors/heartbeats.py), deadlines (actors/deadlines.py), the
actors' health and capacity (actors/health.py), and who pays for a failed attempt (actors/blame.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from actors.blame import Blame
from actors.cluster import node_alive
from actors.deadlines import DeadlinePolicy, ShardDeadlines
from actors.faults import CulpritSearch, StorageOutage, is_storage_error
from actors.health import ActorHealth
from actors.heartbeats import Heartbeats
from actors.pool import SHARDS_IN_FLIGHT_PER_ACTOR, Attempt, GeneratorPool, PoolError
from actors.ray_errors import first_line, task_cause
from actors.shard_queue import ShardQueue
from pipeline.worker.result import ShardResult


@dataclass
class SchedulerHooks:
    on_committed: Callable[[int, ShardResult], None] = lambda shard_id, result: None
    on_failed: Callable[[int, list[str]], None] = lambda shard_id, errors: None
    # images done per shard in flight; called again as soon as a shard leaves the flight, so a shard is
    # never counted both in flight and committed
    on_progress: Callable[[dict[int, int]], None] = lambda in_flight: None
    on_event: Callable[[str], None] = lambda message: None  # retries, kills, restarts: for the log
    on_actors: Callable[[int, int], None] = lambda ready, pending: None  # whenever the counts change
    # More shards (shard id -> rows) the run plans while it runs (a quota's reseeding), asked for whenever
    # the queue would leave a ready actor without work; {} when there are none (yet).
    more_shards: Callable[[], dict[int, int]] = lambda: {}


class ShardScheduler:
    def __init__(
        self,
        pool: GeneratorPool,
        policy: DeadlinePolicy,
        max_attempts: int,
        actor_start_timeout_s: float,
        hooks: SchedulerHooks | None = None,
        poll_s: float = 0.1,
        *,
        capacity_timeout_s: float = 1800.0,
        drain_s: float = 20.0,
        should_stop: Callable[[], bool] = lambda: False,
        storage_outage_s: float = 300.0,
        isolate_culprits: bool = True,
    ):
        self.pool = pool
        self.policy = policy
        self.max_attempts = max_attempts
        self.actor_start_timeout_s = actor_start_timeout_s
        self.capacity_timeout_s = capacity_timeout_s
        self.drain_s = drain_s
        self.should_stop = should_stop
        self.hooks = hooks or SchedulerHooks()
        self.poll_s = poll_s
        self.stopped = False  # run() returned because should_stop() said so (after draining)
        self.outage = StorageOutage(storage_outage_s)
        self.search = CulpritSearch() if isolate_culprits else None
        hooks = self.hooks
        self.shards = ShardQueue()
        self.heartbeats = Heartbeats(pool, hooks.on_progress)
        self.health = ActorHealth(
            pool, self.shards, actor_start_timeout_s, capacity_timeout_s, hooks.on_event, hooks.on_actors
        )
        self.deadlines = ShardDeadlines(
            pool, policy, self.shards, self.health, actor_start_timeout_s, hooks.on_event
        )
        self.blame = Blame(
            self.shards, self.search, self.outage, max_attempts, hooks.on_event, hooks.on_failed
        )

    @property
    def unfinished_attempts(self) -> list[tuple[int, str]]:
        """(shard id, attempt id) of attempts that ended without a result: their uploads are orphans."""
        return self.shards.unfinished_attempts

    @property
    def actor_timeline(self) -> list[tuple[float, int, int]]:
        """(monotonic time, ready, pending) whenever the actor counts changed: summary.json and benches."""
        return self.health.actor_timeline

    def run(self, shard_rows: dict[int, int]) -> None:
        """Run every shard in `shard_rows` (shard id -> planned rows) to a commit or a final failure,
        or until `should_stop()`: then drain and return with `stopped` set."""
        self.shards.start(shard_rows)
        self.health.run_starts(self.poll_s)
        while self.shards.pending or self.pool.attempts() or self.shards.later or self._top_up():
            self.shards.release_due()
            if self.should_stop():
                self._drain()
                return
            self._top_up()
            self._fill()
            self._wait_and_collect()
            self.heartbeats.poll()
            self.deadlines.enforce()
            self.health.check_probes()
            self.health.track()
            if all(slot.dead_reason for slot in self.pool.slots):
                reasons = "; ".join(f"actor {s.index}: {s.dead_reason}" for s in self.pool.slots)
                raise PoolError(f"no generator actor is alive ({reasons})")
            self.health.check_capacity()

    # -- graceful stop --

    def _drain(self) -> None:
        """No new shards; shards whose images are all done (committing) get up to `drain_s` to land.
        Whatever is still running after that is left unfinished (the rerun does it)."""
        self.stopped = True
        self.shards.pending.clear()
        self.shards.later.clear()  # storage back-offs: the rerun does those shards
        deadline = time.monotonic() + self.drain_s
        self.heartbeats.poll(force=True)
        while time.monotonic() < deadline and self._committing():
            self._wait_and_collect()
            self.heartbeats.poll()
            self.shards.pending.clear()  # a retry queued meanwhile is not started
        for slot in self.pool.slots:
            for attempt in list(slot.attempts):
                slot.attempts.remove(attempt)
                self.shards.ended_without_result(attempt)

    def _committing(self) -> list[Attempt]:
        rows = self.shards.rows
        return [a for a in self.pool.attempts() if a.started_at and a.images_done >= rows[a.shard_id]]

    # -- submission --

    def _top_up(self) -> bool:
        """Ask the run for more shards when fewer are queued than actors are ready; True if it gave some."""
        if self.should_stop() or len(self.shards.pending) >= sum(1 for s in self.pool.slots if s.usable):
            return False
        more = self.hooks.more_shards()
        self.shards.add(more)
        return bool(more)

    def _fill(self) -> None:
        """Give the least busy usable actor the next shard until every actor has two (or none are left).
        Near the end (fewer shards left than ready actors) a busy actor gets no second shard: the last
        ones go to whichever actor frees up first instead of queueing behind a running shard."""
        pending = self.shards.pending
        while pending:
            open_slots = [
                s for s in self.pool.slots if s.usable and len(s.attempts) < SHARDS_IN_FLIGHT_PER_ACTOR
            ]
            if not open_slots:
                return
            slot = min(open_slots, key=lambda s: len(s.attempts))
            if slot.attempts and len(pending) < sum(1 for s in self.pool.slots if s.usable):
                return
            shard_id = pending.popleft()
            self.shards.tries[shard_id] += 1
            number = self.shards.tries[shard_id]
            attempt_id = f"{number}-{uuid.uuid4().hex[:12]}"
            if not slot.attempts:
                slot.idle_since = time.monotonic()
            culprits = self.search.isolating(shard_id) if self.search else None
            ref = slot.handle.run_shard.remote(shard_id, attempt_id, culprits)
            slot.attempts.append(
                Attempt(
                    shard_id,
                    number,
                    attempt_id,
                    slot,
                    ref,
                    time.monotonic(),
                    incarnation=slot.restarts,
                    culprits=None if culprits is None else dict(culprits),
                )
            )

    # -- results --

    def _wait_and_collect(self) -> None:
        by_ref = {attempt.ref: attempt for attempt in self.pool.attempts()}
        probes = {slot.probe: slot for slot in self.pool.slots if slot.probe is not None}
        refs = list(by_ref) + list(probes)
        if not refs:
            time.sleep(self.poll_s)
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=self.poll_s)
        if ready:  # collect everything else that is ready too
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            if ref in by_ref:
                self._finish(by_ref[ref])
            else:
                self.health.probe_answered(probes[ref])

    def _finish(self, attempt: Attempt) -> None:
        slot = attempt.slot
        slot.attempts.remove(attempt)
        self.hooks.on_progress(self.heartbeats.images_in_flight())
        if attempt.culprits is not None:  # the row that was running when it ended (before forgetting)
            attempt.running = self.heartbeats.latest(attempt).get("running", attempt.running)
        self.pool.forget(attempt.attempt_id)
        try:
            result = ray.get(attempt.ref)
        except RayTaskError as error:  # the worker raised; the actor is fine
            self.shards.ended_without_result(attempt)
            if is_storage_error(getattr(error, "cause", None)):
                self.blame.storage_failed(attempt, task_cause(error))
            else:
                self.blame.charge(attempt, f"attempt {attempt.number}: {task_cause(error)}")
            return
        except RayActorError as error:
            self.shards.ended_without_result(attempt)
            node_lost = not node_alive(slot.info.get("node_id"))  # preemption: no shard is to blame
            if not node_lost:
                self.blame.assign(attempt)
            self.health.actor_failed(slot, error)
            if attempt.collateral or node_lost:
                cause = "its node was lost" if node_lost else "because of another shard"
                self.hooks.on_event(
                    f"shard {attempt.shard_id}: resubmitted, not charged "
                    f"(actor {slot.index} was lost: {cause})"
                )
                self.shards.resubmit_uncharged(attempt.shard_id)
            elif attempt.deadline_exceeded:
                self.blame.charge(
                    attempt, f"attempt {attempt.number}: deadline of {attempt.deadline_s:.0f} s exceeded"
                )
            else:
                self.blame.charge(
                    attempt, f"attempt {attempt.number}: actor {slot.index} died ({type(error).__name__})"
                )
            return
        except RayError as error:  # anything else Ray reports (out of memory, cancelled, object lost)
            self.shards.ended_without_result(attempt)
            self.health.actor_failed(slot, error)  # probe it: no new work until it answers
            self.blame.charge(
                attempt, f"attempt {attempt.number}: {type(error).__name__}: {first_line(error)}"
            )
            return
        self.outage.recovered()
        started = attempt.started_at or attempt.submitted_at
        if attempt.culprits is None:  # an isolation attempt runs row by row: not a normal pace
            self.policy.observe(self.shards.rows[attempt.shard_id], time.monotonic() - started)
        slot.idle_since = time.monotonic()
        self.hooks.on_committed(attempt.shard_id, result)
