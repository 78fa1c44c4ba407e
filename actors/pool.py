"""The elastic pool of generator actors, and the driver's record of each actor and shard attempt.

`GeneratorPool` requests its target number of GeneratorActors (one GPU each) at once, whether or not
the GPUs exist yet. Ray keeps the ones it cannot place pending, and pending GPU demand is exactly what
the Ray autoscaler and KubeRay add nodes for. At most two shards are in flight per actor
(SHARDS_IN_FLIGHT_PER_ACTOR), so an actor always has its next shard queued (no idle GPU between shards)
and a finished shard uploads while the next one generates. The pool also starts the HeartbeatActor its
actors report to. `ActorSlot` is one actor's place in the pool (its handle, probe and attempts in
flight), `Attempt` one shard attempt submitted to it; actors/scheduler.py drives both.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.generator_actor import GeneratorActor, HeartbeatActor
from pipeline.errors import UserError

SHARDS_IN_FLIGHT_PER_ACTOR = 2


class PoolError(UserError, RuntimeError):
    """The run cannot go on: no generator actor is alive (the message says why)."""


@dataclass
class Attempt:
    """One shard attempt submitted to an actor, as the driver sees it (heartbeats fill it in)."""

    shard_id: int
    number: int  # 1-based attempt count of this shard in this run
    attempt_id: str
    slot: ActorSlot
    ref: Any
    submitted_at: float
    started_at: float | None = None  # driver clock, when its first heartbeat was seen
    images_done: int = 0
    incarnation: int = 0  # the slot's incarnation (restart count) it was submitted to
    deadline_exceeded: bool = False  # this attempt's actor was killed because of this attempt
    deadline_s: float = 0.0  # the deadline it exceeded
    collateral: bool = False  # its actor died because of another attempt: not charged
    culprits: dict | None = None  # isolation mode: the rows it records failed without running them
    running: str | None = None  # isolation mode: the uid of the row running now (from its heartbeat)
    progress_at: float | None = None  # isolation mode: when its last row started (a per-row deadline)


@dataclass
class ActorSlot:
    """One actor's place in the pool: its handle, its probe and restarts, its attempts in flight."""

    index: int
    handle: Any
    info: dict = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    probe: Any = None  # a ready() call in flight: no new work until it answers
    probe_since: float = 0.0
    reprobe_at: float | None = None
    idle_since: float = field(default_factory=time.monotonic)  # no shard of this actor started since
    dead_reason: str | None = None
    restarts: int = 0
    killed_pid: int | None = None  # a probe answered by this pid came from the instance being killed
    loading: tuple | None = None  # (node id, pid) of an instance whose constructor runs, not yet ready
    loading_since: float | None = None  # then the actor start deadline applies (not while it waits for a GPU)

    @property
    def usable(self) -> bool:
        """Ready: answered its probe and nothing is wrong with it; only such actors get shards."""
        return self.dead_reason is None and self.probe is None and self.reprobe_at is None

    @property
    def instance(self) -> tuple:
        return (self.info.get("node_id"), self.info.get("pid"))


class GeneratorPool:
    """The generator actors of one run (plus their heartbeat actor), requested at once."""

    def __init__(
        self,
        config_json: str,
        output: str,
        size: int,
        gpus_per_actor: float = 1.0,
        torch_threads: int = 1,
    ):
        if size < 1:
            raise PoolError("the pool needs at least one actor")
        self._arguments = (config_json, output)
        self.gpus_per_actor = gpus_per_actor
        self._threads = torch_threads  # never derived from `size`: the thread count changes CPU results
        self._heartbeats_name = f"stylegen-heartbeats-{uuid.uuid4().hex}"
        # Heartbeats and deadlines live here: pin it to the driver's node, which outlives any GPU node.
        driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.heartbeat_actor = HeartbeatActor.options(
            name=self._heartbeats_name, scheduling_strategy=driver_node
        ).remote()
        self._forgets: list = []  # forget calls that may not have run yet
        # Every actor is requested now, GPUs or not: the ones Ray cannot place yet stay pending.
        self.slots = [self._new_slot(index) for index in range(size)]

    def _new_slot(self, index: int) -> ActorSlot:
        handle = GeneratorActor.options(num_gpus=self.gpus_per_actor).remote(
            *self._arguments, index, self._heartbeats_name, self._threads
        )
        return ActorSlot(index, handle, probe=handle.ready.remote(), probe_since=time.monotonic())

    def replace(self, slot: ActorSlot) -> ActorSlot:
        """A fresh actor in a dead actor's place (same index), pending until Ray places it."""
        ray.kill(slot.handle, no_restart=True)
        fresh = self._new_slot(slot.index)
        self.slots[self.slots.index(slot)] = fresh
        return fresh

    def counts(self) -> tuple[int, int]:
        """(ready, pending) actors: pending ones wait for a GPU, load models or restart."""
        alive = [slot for slot in self.slots if slot.dead_reason is None]
        ready = sum(1 for slot in alive if slot.usable)
        return ready, len(alive) - ready

    def attempts(self) -> list[Attempt]:
        """Every shard attempt in flight, actor by actor."""
        return [attempt for slot in self.slots for attempt in slot.attempts]

    def wait_ready(self, timeout_s: float) -> list[dict]:
        """Block until every actor answered its first probe (tests and benchmarks use this)."""
        refs = [slot.probe for slot in self.slots if slot.probe is not None]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(done) < len(refs):
            raise PoolError(
                f"{len(refs) - len(done)} of {len(refs)} actors not ready after {timeout_s:.0f} s"
            )
        for slot in self.slots:
            slot.info, slot.probe = ray.get(slot.probe), None
        return [slot.info for slot in self.slots]

    def forget(self, attempt_id: str) -> None:
        """Drop an ended attempt's heartbeat. The call is kept until it has run (see shutdown)."""
        if self._forgets:
            _, self._forgets = ray.wait(self._forgets, num_returns=len(self._forgets), timeout=0)
        self._forgets.append(self.heartbeat_actor.forget.remote([attempt_id]))

    def shutdown(self) -> None:
        """Generator actors first; the heartbeat actor once the `forget` calls sent to it have run. Killed
        with calls pending, Ray reports each as a failed task, on the console of whoever started Ray."""
        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)
        if self._forgets:
            with contextlib.suppress(RayError):  # a dead or hung heartbeat actor: nothing to wait for
                ray.wait(self._forgets, num_returns=len(self._forgets), timeout=10)
        ray.kill(self.heartbeat_actor, no_restart=True)
