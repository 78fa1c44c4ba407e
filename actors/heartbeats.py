"""The scheduler's reading of the HeartbeatActor (actors/generator_actor.py), at most every
HEARTBEAT_POLL_S: when each attempt started and how many images it has done, the row it runs in
isolation mode, and which actors' constructors started (those are loading models, so their start
deadline runs; before that they wait for a GPU)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.pool import Attempt, GeneratorPool

log = logging.getLogger("stylegen.pool")  # the run log's name for the actor pool's lines

HEARTBEAT_POLL_S = 0.5


class Heartbeats:
    def __init__(self, pool: GeneratorPool, on_progress: Callable[[dict[int, int]], None]):
        self.pool = pool
        self._on_progress = on_progress
        self._last_poll = 0.0

    def latest(self, attempt: Attempt) -> dict:
        """The attempt's last heartbeat, read now ({} when there is none or the actor does not answer)."""
        try:
            heartbeats = self.pool.heartbeat_actor.snapshot.remote()
            return ray.get(heartbeats, timeout=10).get(attempt.attempt_id) or {}
        except (GetTimeoutError, RayActorError):
            return {}

    def poll(self, force: bool = False) -> None:
        """Update the attempts in flight and the loading actors from the heartbeats, then report progress."""
        now = time.monotonic()
        if now - self._last_poll < HEARTBEAT_POLL_S and not force:
            return
        self._last_poll = now
        heartbeat_actor = self.pool.heartbeat_actor
        try:
            beats, starts = ray.get(
                [heartbeat_actor.snapshot.remote(), heartbeat_actor.starts.remote()], timeout=10
            )
        except (GetTimeoutError, RayActorError):
            return
        self._note_loading(starts, now)
        for attempt in self.pool.attempts():
            beat = beats.get(attempt.attempt_id)
            if beat is None:
                continue
            if attempt.started_at is None:
                attempt.started_at = now
                attempt.slot.idle_since = now
            attempt.images_done = beat["images_done"]
            if beat.get("running") and beat["running"] != attempt.running:
                attempt.running, attempt.progress_at = beat["running"], now
        self._on_progress(self.images_in_flight())

    def images_in_flight(self) -> dict[int, int]:
        return {attempt.shard_id: attempt.images_done for attempt in self.pool.attempts()}

    def _note_loading(self, starts: dict[int, dict], now: float) -> None:
        """An actor that is not ready but whose constructor started (a new node id / pid) is loading:
        from now on its start deadline runs."""
        for slot in self.pool.slots:
            start = starts.get(slot.index)
            if slot.dead_reason or slot.usable or not start:
                continue
            instance = (start["node_id"], start["pid"])
            if instance != slot.instance and instance != slot.loading:
                slot.loading, slot.loading_since = instance, now
                log.info("actor %d: loading on node %s", slot.index, str(start["node_id"])[:12])
