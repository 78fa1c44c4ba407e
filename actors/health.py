"""The actors' health as the scheduler sees it: probes, restarts, dead actors and their replacements,
and how many actors are ready over time (the capacity timeout).

An actor gets shards only while it is usable (ActorSlot.usable): after a failure or a deadline kill it
is probed (`ready()`) until an instance answers, while Ray restarts it (`max_restarts=-1`). An actor
whose constructor raised, or that is still loading after `actor_start_timeout_s` (waiting for a GPU has
no deadline: that is the autoscaler's business), is dead: its shards go back to the queue uncharged and,
once some actor has worked, a fresh actor takes its place. With no actor ready for
`capacity_timeout_s` the run stops (CapacityTimeout) and a rerun resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from actors.pool import ActorSlot, GeneratorPool, PoolError
from actors.ray_errors import death_reason, task_cause
from actors.shard_queue import ShardQueue

PROBE_RETRY_S = 0.5


class CapacityTimeout(PoolError):
    """No actor was ready for `capacity_timeout_s` while shards were waiting (no GPUs came)."""


class ActorHealth:
    def __init__(
        self,
        pool: GeneratorPool,
        shards: ShardQueue,
        actor_start_timeout_s: float,
        capacity_timeout_s: float,
        on_event: Callable[[str], None],
        on_actors: Callable[[int, int], None],
    ):
        self.pool = pool
        self.shards = shards
        self.actor_start_timeout_s = actor_start_timeout_s
        self.capacity_timeout_s = capacity_timeout_s
        self._on_event = on_event
        self._on_actors = on_actors
        self._replacements = 0
        self._ever_ready = False
        self._last_ready = time.monotonic()
        # (monotonic time, ready, pending) whenever the actor counts change: summary.json and benches
        self.actor_timeline: list[tuple[float, int, int]] = []

    # -- actors over time, capacity --

    def run_starts(self, poll_s: float) -> None:
        """The capacity clock of a run counts from its start at the latest."""
        self._last_ready = max(self._last_ready, time.monotonic() - poll_s)

    def track(self) -> None:
        ready, pending = self.pool.counts()
        if ready:
            self._last_ready, self._ever_ready = time.monotonic(), True
        if not self.actor_timeline or self.actor_timeline[-1][1:] != (ready, pending):
            self.actor_timeline.append((time.monotonic(), ready, pending))
            self._on_actors(ready, pending)

    def check_capacity(self) -> None:
        waited = time.monotonic() - self._last_ready
        if waited <= self.capacity_timeout_s:
            return
        gpus = ray.cluster_resources().get("GPU", 0.0)
        _, pending = self.pool.counts()
        raise CapacityTimeout(
            f"no generator actor was ready for {self.capacity_timeout_s:g} s (execution.capacity_timeout_s); "
            f"{pending} actor(s) x {self.pool.gpus_per_actor:g} GPU still waiting for a GPU or loading, "
            f"the cluster has {gpus:g} GPUs now; rerun the same command to resume"
        )

    # -- probes, restarts, dead actors --

    def actor_failed(self, slot: ActorSlot, error: Exception) -> None:
        if slot.probe is None and slot.dead_reason is None:
            self._on_event(f"actor {slot.index}: lost ({type(error).__name__}); waiting for its restart")
            self._start_probe(slot)

    def _start_probe(self, slot: ActorSlot) -> None:
        slot.probe, slot.reprobe_at = slot.handle.ready.remote(), None
        if not slot.probe_since:
            slot.probe_since = time.monotonic()

    def probe_answered(self, slot: ActorSlot) -> None:
        ref, slot.probe = slot.probe, None
        try:
            info = ray.get(ref)
        except ActorDiedError as error:
            self._declare_dead(slot, death_reason(error))
            return
        except RayActorError:  # restarting: ask again shortly
            slot.reprobe_at = time.monotonic() + PROBE_RETRY_S
            return
        except RayTaskError as error:
            self._declare_dead(slot, task_cause(error))
            return
        if info.get("pid") == slot.killed_pid:  # the killed instance answered before it went away
            slot.reprobe_at = time.monotonic() + PROBE_RETRY_S
            return
        slot.killed_pid = None
        restarted = bool(slot.info) and info.get("pid") != slot.info.get("pid")
        if restarted:
            slot.restarts += 1
        slot.info, slot.probe_since, slot.idle_since = info, 0.0, time.monotonic()
        slot.loading = slot.loading_since = None
        ready, _ = self.pool.counts()
        how = f"restarted as pid {info.get('pid')}" if restarted else "ready"
        self._on_event(
            f"actor {slot.index}: {how} on node {str(info.get('node_id'))[:12]} "
            f"({ready} of {len(self.pool.slots)} ready)"
        )

    def check_probes(self) -> None:
        now = time.monotonic()
        for slot in list(self.pool.slots):
            if slot.dead_reason:
                continue
            if slot.reprobe_at is not None and now >= slot.reprobe_at:
                self._start_probe(slot)
            waiting = slot.probe is not None or slot.reprobe_at is not None
            # Only a constructor that runs has a deadline; waiting for a GPU is the autoscaler's business.
            if waiting and slot.loading_since and now - slot.loading_since > self.actor_start_timeout_s:
                self._declare_dead(slot, f"still loading after {self.actor_start_timeout_s:.0f} s")

    def restart(self, slot: ActorSlot, now: float) -> None:
        """Kill the actor so that Ray restarts it."""
        ray.kill(slot.handle, no_restart=False)
        slot.killed_pid = slot.info.get("pid")
        slot.probe_since = now
        slot.reprobe_at = now + PROBE_RETRY_S  # no new work until the restarted actor answers

    def _declare_dead(self, slot: ActorSlot, reason: str) -> None:
        slot.dead_reason, slot.probe, slot.reprobe_at = reason, None, None
        self._on_event(f"actor {slot.index}: dead ({reason})")
        ray.kill(slot.handle, no_restart=True)
        for attempt in list(slot.attempts):  # resubmit elsewhere without charging the shard
            slot.attempts.remove(attempt)
            self.shards.ended_without_result(attempt)
            self.shards.resubmit_uncharged(attempt.shard_id)
        # Keep the pool at its target: once some actor has worked (so the config is fine), a dead one is
        # a bad node or a hung load; a fresh actor goes wherever Ray places it. Bounded, so a fault that
        # kills every new actor cannot churn forever.
        if self._ever_ready and self._replacements < len(self.pool.slots):
            self._replacements += 1
            fresh = self.pool.replace(slot)
            # the dead actor's last start report (same index) is not the new actor loading
            fresh.loading = slot.loading or slot.instance
            self._on_event(f"actor {slot.index}: replaced by a new actor (pending until placed)")
