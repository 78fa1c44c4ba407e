"""The actor pool and the shard scheduler: the only place that waits on Ray.

- `start_ray` connects to a cluster (`--address` / RAY_ADDRESS, code shipped with a runtime_env) or
  starts a local instance whose GPUs are logical on a CPU machine, so one code path runs everywhere.
- `GeneratorPool` is elastic: it requests its target number of GeneratorActors (one GPU each) at once,
  whether or not the GPUs exist yet. Ray keeps the ones it cannot place pending, and pending GPU demand
  is exactly what the Ray autoscaler and KubeRay add nodes for. At most two shards are in flight per
  actor, so an actor always has its next shard queued (no idle GPU between shards) and a finished shard
  uploads while the next one generates.
- `ShardScheduler.run` is the `ray.wait` loop. Shards go only to actors that answered their probe
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
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.faults import CulpritSearch, StorageOutage, is_storage_error
from actors.generator_actor import GeneratorActor, ProgressActor
from pipeline.errors import UserError
from pipeline.worker.result import ShardResult

log = logging.getLogger("stylegen.pool")

SHARDS_IN_FLIGHT_PER_ACTOR = 2
PROBE_RETRY_S = 0.5
HEARTBEAT_POLL_S = 0.5


class PoolError(UserError, RuntimeError):
    """The run cannot go on: no generator actor is alive (the message says why)."""


class CapacityTimeout(PoolError):
    """No actor was ready for `capacity_timeout_s` while shards were waiting (no GPUs came)."""


# --- Ray connection --------------------------------------------------------------------------------


def project_packages() -> list[Path]:
    """The three packages to ship to a remote cluster."""
    import actors
    import manifests
    import pipeline

    return [Path(module.__file__).parent for module in (manifests, pipeline, actors)]


def start_ray(address: str | None, num_gpus: float | None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or RAY_ADDRESS), or start a local instance. True when this call did it,
    so the caller shuts down only what it started; an already-initialized Ray is reused."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        modules = [str(p) for p in project_packages()]
        try:
            ray.init(address=address, runtime_env={"py_modules": modules}, **common)
        except (ConnectionError, RuntimeError, RayError) as error:
            raise PoolError(connection_failure(address, error)) from None
    else:
        # "local": a fresh instance of our own. A bare ray.init() would attach to the latest cluster
        # anyone started on this machine with `ray start` (Ray reads its address from the temp folder).
        ray.init(address="local", num_gpus=num_gpus, num_cpus=num_cpus, **common)
    return True


def connection_failure(address: str, error: BaseException) -> str:
    """One line for a failed connection, with the token hint when the cluster refused us for want of one."""
    from ray.exceptions import AuthenticationError

    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return (
            f"the Ray cluster at {address} requires an authentication token: set RAY_AUTH_MODE=token and "
            "the cluster's token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH)"
        )
    return f"cannot connect to the Ray cluster at {address}: {_first_line(error)}"


def detect_gpus() -> int:
    """CUDA devices on this machine; without an NVIDIA driver, 0 (and no torch import, which is slow)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --- deadlines -------------------------------------------------------------------------------------


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


# --- pool ------------------------------------------------------------------------------------------


@dataclass
class Attempt:
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
        self._progress_name = f"stylegen-progress-{uuid.uuid4().hex}"
        # Heartbeats and deadlines live here: pin it to the driver's node, which outlives any GPU node.
        driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.progress = ProgressActor.options(
            name=self._progress_name, scheduling_strategy=driver_node
        ).remote()
        self._forgets: list = []  # forget calls that may not have run yet
        # Every actor is requested now, GPUs or not: the ones Ray cannot place yet stay pending.
        self.slots = [self._new_slot(index) for index in range(size)]

    def _new_slot(self, index: int) -> ActorSlot:
        handle = GeneratorActor.options(num_gpus=self.gpus_per_actor).remote(
            *self._arguments, index, self._progress_name, self._threads
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
        self._forgets.append(self.progress.forget.remote([attempt_id]))

    def shutdown(self) -> None:
        """Generator actors first; the heartbeat actor once the `forget` calls sent to it have run. Killed
        with calls pending, Ray reports each as a failed task, on the console of whoever started Ray."""
        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)
        if self._forgets:
            with contextlib.suppress(RayError):  # a dead or hung heartbeat actor: nothing to wait for
                ray.wait(self._forgets, num_returns=len(self._forgets), timeout=10)
        ray.kill(self.progress, no_restart=True)


# --- scheduler -------------------------------------------------------------------------------------


@dataclass
class SchedulerHooks:
    on_committed: Callable[[int, ShardResult], None] = lambda shard_id, result: None
    on_failed: Callable[[int, list[str]], None] = lambda shard_id, errors: None
    # images done per shard in flight; called again as soon as a shard leaves the flight, so a shard is
    # never counted both in flight and committed
    on_progress: Callable[[dict[int, int]], None] = lambda in_flight: None
    on_event: Callable[[str], None] = lambda message: None  # retries, kills, restarts: for the log
    on_actors: Callable[[int, int], None] = lambda ready, pending: None  # whenever the counts change


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
        self._errors: dict[int, list[str]] = defaultdict(list)
        # (shard id, attempt id) of attempts that ended without a result: their uploads are orphans
        self.unfinished_attempts: list[tuple[int, str]] = []
        self._tries: dict[int, int] = defaultdict(int)
        self._last_heartbeat_poll = 0.0
        self._replacements = 0
        self._ever_ready = False
        self._last_ready = time.monotonic()
        # (monotonic time, ready, pending) whenever the actor counts change: summary.json and benches
        self.actor_timeline: list[tuple[float, int, int]] = []
        self.stopped = False  # run() returned because should_stop() said so (after draining)
        self.outage = StorageOutage(storage_outage_s)
        self.search = CulpritSearch() if isolate_culprits else None
        self._later: list[tuple[float, int]] = []  # (when, shard id): resubmissions after a back-off

    def run(self, shard_rows: dict[int, int]) -> None:
        """Run every shard in `shard_rows` (shard id -> planned rows) to a commit or a final failure,
        or until `should_stop()`: then drain and return with `stopped` set."""
        self._rows = shard_rows
        self._pending: deque[int] = deque(sorted(shard_rows))
        self._last_ready = max(self._last_ready, time.monotonic() - self.poll_s)
        while self._pending or self._attempts() or self._later:
            self._release_due()
            if self.should_stop():
                self._drain()
                return
            self._fill()
            self._wait_and_collect()
            self._poll_heartbeats()
            self._enforce_deadlines()
            self._check_probes()
            self._track_actors()
            if all(slot.dead_reason for slot in self.pool.slots):
                reasons = "; ".join(f"actor {s.index}: {s.dead_reason}" for s in self.pool.slots)
                raise PoolError(f"no generator actor is alive ({reasons})")
            self._check_capacity()

    # -- actors over time, capacity --

    def _track_actors(self) -> None:
        ready, pending = self.pool.counts()
        if ready:
            self._last_ready, self._ever_ready = time.monotonic(), True
        if not self.actor_timeline or self.actor_timeline[-1][1:] != (ready, pending):
            self.actor_timeline.append((time.monotonic(), ready, pending))
            self.hooks.on_actors(ready, pending)

    def _check_capacity(self) -> None:
        waited = time.monotonic() - self._last_ready
        if waited <= self.capacity_timeout_s:
            return
        import ray

        gpus = ray.cluster_resources().get("GPU", 0.0)
        _, pending = self.pool.counts()
        raise CapacityTimeout(
            f"no generator actor was ready for {self.capacity_timeout_s:g} s (execution.capacity_timeout_s); "
            f"{pending} actor(s) x {self.pool.gpus_per_actor:g} GPU still waiting for a GPU or loading, "
            f"the cluster has {gpus:g} GPUs now; rerun the same command to resume"
        )

    # -- graceful stop --

    def _drain(self) -> None:
        """No new shards; shards whose images are all done (committing) get up to `drain_s` to land.
        Whatever is still running after that is left unfinished (the rerun does it)."""
        self.stopped = True
        self._pending.clear()
        self._later.clear()  # storage back-offs: the rerun does those shards
        deadline = time.monotonic() + self.drain_s
        self._poll_heartbeats(force=True)
        while time.monotonic() < deadline and self._committing():
            self._wait_and_collect()
            self._poll_heartbeats()
            self._pending.clear()  # a retry queued meanwhile is not started
        for slot in self.pool.slots:
            for attempt in list(slot.attempts):
                slot.attempts.remove(attempt)
                self.unfinished_attempts.append((attempt.shard_id, attempt.attempt_id))

    def _committing(self) -> list[Attempt]:
        return [a for a in self._attempts() if a.started_at and a.images_done >= self._rows[a.shard_id]]

    # -- submission --

    def _release_due(self) -> None:
        now = time.monotonic()
        due = [item for item in self._later if item[0] <= now]
        for item in due:
            self._later.remove(item)
            self._pending.append(item[1])

    def _attempts(self) -> list[Attempt]:
        return [attempt for slot in self.pool.slots for attempt in slot.attempts]

    def _fill(self) -> None:
        """Give the least busy usable actor the next shard until every actor has two (or none are left).
        Near the end (fewer shards left than ready actors) a busy actor gets no second shard: the last
        ones go to whichever actor frees up first instead of queueing behind a running shard."""
        while self._pending:
            open_slots = [
                s for s in self.pool.slots if s.usable and len(s.attempts) < SHARDS_IN_FLIGHT_PER_ACTOR
            ]
            if not open_slots:
                return
            slot = min(open_slots, key=lambda s: len(s.attempts))
            if slot.attempts and len(self._pending) < sum(1 for s in self.pool.slots if s.usable):
                return
            shard_id = self._pending.popleft()
            self._tries[shard_id] += 1
            number = self._tries[shard_id]
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
        by_ref = {attempt.ref: attempt for attempt in self._attempts()}
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
                self._probe_answered(probes[ref])

    def _finish(self, attempt: Attempt) -> None:
        slot = attempt.slot
        slot.attempts.remove(attempt)
        self.hooks.on_progress(self._images_in_flight())
        if attempt.culprits is not None:  # the row that was running when it ended (before forgetting)
            attempt.running = self._latest_beat(attempt).get("running", attempt.running)
        self.pool.forget(attempt.attempt_id)
        try:
            result = ray.get(attempt.ref)
        except RayTaskError as error:  # the worker raised; the actor is fine
            self.unfinished_attempts.append((attempt.shard_id, attempt.attempt_id))
            if is_storage_error(getattr(error, "cause", None)):
                self._wait_for_storage(attempt, _cause(error))
            else:
                self._charge(attempt, f"attempt {attempt.number}: {_cause(error)}")
            return
        except RayActorError as error:
            self.unfinished_attempts.append((attempt.shard_id, attempt.attempt_id))
            node_lost = not _node_alive(slot.info.get("node_id"))  # preemption: no shard is to blame
            if not node_lost:
                self._assign_blame(attempt)
            self._actor_failed(slot, error)
            if attempt.collateral or node_lost:
                cause = "its node was lost" if node_lost else "because of another shard"
                self.hooks.on_event(
                    f"shard {attempt.shard_id}: resubmitted, not charged "
                    f"(actor {slot.index} was lost: {cause})"
                )
                self._tries[attempt.shard_id] -= 1
                self._pending.appendleft(attempt.shard_id)
            elif attempt.deadline_exceeded:
                self._charge(
                    attempt, f"attempt {attempt.number}: deadline of {attempt.deadline_s:.0f} s exceeded"
                )
            else:
                self._charge(
                    attempt, f"attempt {attempt.number}: actor {slot.index} died ({type(error).__name__})"
                )
            return
        except RayError as error:  # anything else Ray reports (out of memory, cancelled, object lost)
            self.unfinished_attempts.append((attempt.shard_id, attempt.attempt_id))
            self._actor_failed(slot, error)  # probe it: no new work until it answers
            self._charge(attempt, f"attempt {attempt.number}: {type(error).__name__}: {_first_line(error)}")
            return
        self.outage.recovered()
        started = attempt.started_at or attempt.submitted_at
        if attempt.culprits is None:  # an isolation attempt runs row by row: not a normal pace
            self.policy.observe(self._rows[attempt.shard_id], time.monotonic() - started)
        slot.idle_since = time.monotonic()
        self.hooks.on_committed(attempt.shard_id, result)

    def _wait_for_storage(self, attempt: Attempt, error: str) -> None:
        """A storage failure is not the shard's fault: resubmit it after a back-off, uncharged (and
        stop the run with StorageDown once storage has failed for too long)."""
        delay = self.outage.failed(f"shard {attempt.shard_id}: {error}")
        self.hooks.on_event(
            f"shard {attempt.shard_id}: storage failed ({error}); not charged, retrying in {delay:.0f} s"
        )
        self._tries[attempt.shard_id] -= 1
        self._later.append((time.monotonic() + delay, attempt.shard_id))

    def _charge(self, attempt: Attempt, error: str) -> None:
        shard_id = attempt.shard_id
        errors = self._errors[shard_id]
        errors.append(error)
        if attempt.culprits is not None:  # an isolation attempt died: blame the row that was running
            culprit = self.search.blame(shard_id, attempt.running, error)
            if culprit is not None:
                self.hooks.on_event(
                    f"shard {shard_id}: row {culprit} isolated ({error}); rerunning the others"
                )
                self._pending.appendleft(shard_id)
                return
            self.hooks.on_event(f"shard {shard_id}: no row to blame for {error}; giving up")
            self.hooks.on_failed(shard_id, list(errors))
        elif len(errors) >= self.max_attempts and self.search is not None:
            self.hooks.on_event(
                f"shard {shard_id}: failed {len(errors)} times ({error}); rerunning it one row at a time "
                "to isolate the rows that cause it"
            )
            self.search.start(shard_id)
            self._pending.appendleft(shard_id)
        elif len(errors) >= self.max_attempts:
            self.hooks.on_event(f"shard {shard_id}: failed {len(errors)} times, giving up: {error}")
            self.hooks.on_failed(shard_id, list(errors))
        else:
            self.hooks.on_event(f"shard {shard_id}: {error}; retrying")
            self._pending.appendleft(shard_id)

    def _assign_blame(self, failed: Attempt) -> None:
        """An actor died with shards in flight. The one it was generating caused it; one waiting to
        start or already uploading (all images done) is resubmitted without being charged. When the
        heartbeats cannot tell (none seen yet), every attempt is charged."""
        if failed.deadline_exceeded or failed.collateral:
            return
        same_instance = [failed] + [a for a in failed.slot.attempts if a.incarnation == failed.incarnation]
        undecided = [a for a in same_instance if not (a.deadline_exceeded or a.collateral)]
        generating = [
            a for a in undecided if a.started_at is not None and a.images_done < self._rows[a.shard_id]
        ]
        if generating:
            for attempt in undecided:
                attempt.collateral = attempt not in generating

    # -- actor health --

    def _actor_failed(self, slot: ActorSlot, error: Exception) -> None:
        if slot.probe is None and slot.dead_reason is None:
            self.hooks.on_event(f"actor {slot.index}: lost ({type(error).__name__}); waiting for its restart")
            self._start_probe(slot)

    def _start_probe(self, slot: ActorSlot) -> None:
        slot.probe, slot.reprobe_at = slot.handle.ready.remote(), None
        if not slot.probe_since:
            slot.probe_since = time.monotonic()

    def _probe_answered(self, slot: ActorSlot) -> None:
        ref, slot.probe = slot.probe, None
        try:
            info = ray.get(ref)
        except ActorDiedError as error:
            self._declare_dead(slot, _death_reason(error))
            return
        except RayActorError:  # restarting: ask again shortly
            slot.reprobe_at = time.monotonic() + PROBE_RETRY_S
            return
        except RayTaskError as error:
            self._declare_dead(slot, _cause(error))
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
        self.hooks.on_event(
            f"actor {slot.index}: {how} on node {str(info.get('node_id'))[:12]} "
            f"({ready} of {len(self.pool.slots)} ready)"
        )

    def _check_probes(self) -> None:
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

    def _declare_dead(self, slot: ActorSlot, reason: str) -> None:
        slot.dead_reason, slot.probe, slot.reprobe_at = reason, None, None
        self.hooks.on_event(f"actor {slot.index}: dead ({reason})")
        ray.kill(slot.handle, no_restart=True)
        for attempt in list(slot.attempts):  # resubmit elsewhere without charging the shard
            slot.attempts.remove(attempt)
            self.unfinished_attempts.append((attempt.shard_id, attempt.attempt_id))
            self._tries[attempt.shard_id] -= 1
            self._pending.appendleft(attempt.shard_id)
        # Keep the pool at its target: once some actor has worked (so the config is fine), a dead one is
        # a bad node or a hung load; a fresh actor goes wherever Ray places it. Bounded, so a fault that
        # kills every new actor cannot churn forever.
        if self._ever_ready and self._replacements < len(self.pool.slots):
            self._replacements += 1
            fresh = self.pool.replace(slot)
            # the dead actor's last start report (same index) is not the new actor loading
            fresh.loading = slot.loading or slot.instance
            self.hooks.on_event(f"actor {slot.index}: replaced by a new actor (pending until placed)")

    # -- heartbeats and deadlines --

    def _latest_beat(self, attempt: Attempt) -> dict:
        try:
            return ray.get(self.pool.progress.snapshot.remote(), timeout=10).get(attempt.attempt_id) or {}
        except (GetTimeoutError, RayActorError):
            return {}

    def _poll_heartbeats(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat_poll < HEARTBEAT_POLL_S and not force:
            return
        self._last_heartbeat_poll = now
        try:
            beats, starts = ray.get(
                [self.pool.progress.snapshot.remote(), self.pool.progress.starts.remote()], timeout=10
            )
        except (GetTimeoutError, RayActorError):
            return
        self._note_loading(starts, now)
        for attempt in self._attempts():
            beat = beats.get(attempt.attempt_id)
            if beat is None:
                continue
            if attempt.started_at is None:
                attempt.started_at = now
                attempt.slot.idle_since = now
            attempt.images_done = beat["images_done"]
            if beat.get("running") and beat["running"] != attempt.running:
                attempt.running, attempt.progress_at = beat["running"], now
        self.hooks.on_progress(self._images_in_flight())

    def _images_in_flight(self) -> dict[int, int]:
        return {attempt.shard_id: attempt.images_done for attempt in self._attempts()}

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

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.pool.slots:
            if not slot.usable or not slot.attempts:
                continue
            late = [
                a
                for a in slot.attempts
                if a.started_at is not None and now - a.started_at > self._deadline(a)
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
                    attempt.deadline_s = self.policy.deadline(1) if row_deadline else self._deadline(attempt)
                elif stuck:
                    attempt.deadline_s = self.actor_start_timeout_s
            why = f"shard {late[0].shard_id} past its deadline" if late else "no shard started"
            self.hooks.on_event(f"actor {slot.index}: killed ({why}); Ray restarts it")
            ray.kill(slot.handle, no_restart=False)
            slot.killed_pid = slot.info.get("pid")
            slot.probe_since = now
            slot.reprobe_at = now + PROBE_RETRY_S  # no new work until the restarted actor answers

    def _deadline(self, attempt: Attempt) -> float:
        """Seconds the attempt may run; in isolation mode, each row gets one row's deadline (counted
        from when it started), so the deadline names the row that hangs."""
        if attempt.culprits is None:
            return self.policy.deadline(self._rows[attempt.shard_id])
        return (attempt.progress_at or attempt.started_at) - attempt.started_at + self.policy.deadline(1)


def _cause(error: RayTaskError) -> str:
    cause = getattr(error, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return _first_line(error)


def _death_reason(error: ActorDiedError) -> str:
    """For a constructor that raised, its exception line (the last of the traceback); else line one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "creation task" in str(error) and lines:
        return f"its constructor raised {lines[-1][:300]}"
    return _first_line(error)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _node_alive(node_id: str | None) -> bool:
    """Whether the Ray node is still in the cluster (True when unknown: then the usual blame applies)."""
    if not node_id:
        return True
    return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())
