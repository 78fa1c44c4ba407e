"""Run the pending shards on an elastic pool of generator actors (actors/pool.py): start or join Ray,
size the pool (`Placement`, `pool_target`), and wire the scheduler's hooks to the progress bar, the
metrics, run.json and the failed-shard records. `execute` returns what it found (`Executed`)."""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field

from pipeline.run.progress import RunProgress
from pipeline.run.quota import QuotaTracker, plan_reseeds
from pipeline.run.resume import read_run_record
from pipeline.run.run_json import record_models, record_pool
from pipeline.run.stop import StopSignals
from pipeline.run.summary import PoolStats
from pipeline.run_config import RunConfig
from pipeline.storage.ledger import CommitView
from pipeline.worker.result import ShardResult
from pipeline.worker.shard_files import commit_failed_shard

log = logging.getLogger("stylegen.driver")


@dataclass(frozen=True)
class Placement:
    """Where the generator actors run: the pool's target size (None: execution.max_actors, else one
    per GPU), the GPUs each holds (may be fractional) and the Ray cluster (None: RAY_ADDRESS, else a
    local instance of our own)."""

    actors: int | None = None
    gpus_per_actor: float = 1.0
    address: str | None = None


@dataclass(frozen=True)
class Executed:
    """What a pool run found: the pool's stats, the errors of the shards that failed every attempt
    (recorded as failed), and the attempts that ended without a result (for finalize to clean up)."""

    pool: PoolStats = field(default_factory=PoolStats)
    failed_errors: dict[int, list[str]] = field(default_factory=dict)
    unfinished: tuple[tuple[int, str], ...] = ()


def execute(
    store,
    config: RunConfig,
    pending: dict[int, int],
    progress: RunProgress,
    placement: Placement,
    *,
    commits: CommitView,
    log_key: str,
    stop: StopSignals | None = None,
    lost_lease: threading.Event | None = None,
    quota: QuotaTracker | None = None,
) -> Executed:
    """Run the pending shards on an elastic pool of generator actors (see actors/scheduler.py); every
    commit goes into `commits` (the driver's view, and the ledger); `log_key` names this run in
    run.json's `runs`, where its pool is recorded. With a `quota`, shards of reseeded rows are planned
    and run as groups fall short (pipeline/run/quota.py)."""
    import ray

    from actors.cluster import detect_gpus, start_ray
    from actors.deadlines import DeadlinePolicy
    from actors.metrics import RunMetrics
    from actors.pool import GeneratorPool
    from actors.scheduler import SchedulerHooks, ShardScheduler

    execution = config.execution
    wanted = placement.actors or execution.max_actors
    gpus_per_actor, address = placement.gpus_per_actor, placement.address
    known_models = set((read_run_record(store) or {}).get("models") or {})
    failed_errors: dict[int, list[str]] = {}
    local_gpus = None
    if not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        # Logical GPUs on a CPU machine, so the same scheduling code runs everywhere.
        local_gpus = detect_gpus() or math.ceil((wanted or 1) * gpus_per_actor)
    with stop.kept() if stop is not None else nullcontext():  # ray.init has SIGTERM handlers of its own
        started_ray = start_ray(address, local_gpus)
    pool = metrics = None
    try:
        if stop is not None and stop.requested:  # while Ray was starting: stop now that it can shut down
            return Executed(PoolStats(stopped=True))
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        # A quota may add shards later: the pool is not sized down to the shards planned now.
        size = pool_target(wanted, gpus_per_actor, cluster_gpus, len(pending) if quota is None else None)
        if wanted and size < wanted:
            progress.console.print(
                f"running {size} actor(s), not {wanted}: only {len(pending)} shard(s) left to run and an "
                "actor without a shard would only load models",
                markup=False,
            )
        pool = GeneratorPool(
            config.model_dump_json(), store.uri, size, gpus_per_actor, execution.torch_threads
        )
        log.info(
            "pool: %d actors x %g GPU requested (cluster GPUs now: %g)", size, gpus_per_actor, cluster_gpus
        )
        record_pool(store, log_key, size, gpus_per_actor)
        if size * gpus_per_actor > cluster_gpus + 1e-9:
            progress.console.print(
                f"requesting {size} actors x {gpus_per_actor:g} GPU; the cluster has {cluster_gpus:g} GPUs "
                "now: the rest stay pending until GPU nodes join (an autoscaler adds them)",
                highlight=False,
                soft_wrap=True,
            )
        metrics = RunMetrics(store.uri)

        def committed(shard_id: int, result: ShardResult) -> None:
            commits.add(result.ledger_entry)
            if quota is not None:
                quota.shard_committed(shard_id, result.groups)
            record_models(store, result.models, known_models)
            progress.shard_done(shard_id, result.rows, result.kept, result.rejected, result.failed)
            metrics.shard_committed(result)
            log.info(
                "shard %d committed (attempt %s, %s): %d kept, %d rejected, %d failed in %.1f s on node %s",
                shard_id,
                result.attempt_id,
                "ours" if result.committed else "an earlier attempt's",
                result.kept,
                result.rejected,
                result.failed,
                result.seconds,
                str(result.node_id)[:12],
            )

        def failed(shard_id: int, errors: list[str]) -> None:
            failed_errors[shard_id] = errors
            try:
                recorded = commit_failed_shard(
                    store, config, shard_id, errors, f"failed-{uuid.uuid4().hex[:12]}"
                )
            except Exception as error:  # the driver never dies of one shard: the rerun redoes it
                log.error(
                    "shard %d: could not record its rows as failed (%s: %s); it stays uncommitted and "
                    "the rerun redoes it",
                    shard_id,
                    type(error).__name__,
                    error,
                )
                return
            commits.add(recorded.ledger_entry)
            if quota is not None:
                quota.shard_failed(shard_id)
            rows = pending[shard_id]
            progress.shard_done(shard_id, rows, 0, 0, rows)
            metrics.shard_failed(rows)
            log.error("shard %d recorded as failed (all %d rows): %s", shard_id, rows, " | ".join(errors))

        def event(message: str) -> None:
            log.warning(message)
            progress.console.print(message, style="dim", markup=False)

        def actors_changed(ready: int, waiting: int) -> None:
            progress.actors(ready, waiting)
            metrics.actors(ready, waiting)

        def more_shards() -> dict[int, int]:
            if quota is None or not quota.ready:
                return {}
            _, added = plan_reseeds(store, quota)
            pending.update(added)
            progress.add_shards(len(added), sum(added.values()))
            return added

        hooks = SchedulerHooks(
            on_committed=committed,
            on_failed=failed,
            on_progress=progress.images_in_flight,
            on_event=event,
            on_actors=actors_changed,
            more_shards=more_shards,
        )
        policy = DeadlinePolicy(
            execution.deadline_factor, execution.first_deadline_s, execution.min_deadline_s
        )
        scheduler = ShardScheduler(
            pool,
            policy,
            execution.max_attempts,
            execution.actor_start_timeout_s,
            hooks,
            capacity_timeout_s=execution.capacity_timeout_s,
            drain_s=execution.drain_s,
            should_stop=lambda: (
                (stop is not None and stop.requested) or bool(lost_lease and lost_lease.is_set())
            ),
            storage_outage_s=execution.storage_outage_s,
            isolate_culprits=execution.isolate_culprits,
        )
        scheduler.run(pending)
        progress.stop()  # the bar is done; shutting the pool down takes a moment
        return Executed(
            PoolStats(size, scheduler.actor_timeline, scheduler.stopped),
            failed_errors,
            tuple(scheduler.unfinished_attempts),
        )
    finally:
        if pool is not None:
            pool.shutdown()
        if metrics is not None:
            metrics.actors(0, 0)  # the pool is gone (dashboards would otherwise show its last counts)
        if started_ray:
            ray.shutdown()


def pool_target(wanted: int | None, gpus_per_actor: float, cluster_gpus: float, shards: int | None) -> int:
    """How many actors to request: `wanted` (--actors / execution.max_actors), else one per GPU the
    cluster has now; never more than there are `shards` (an actor without a shard would only load;
    None: more may come)."""
    from actors.pool import PoolError

    size = wanted or int(cluster_gpus / gpus_per_actor + 1e-9)
    if size < 1:
        raise PoolError(
            f"this Ray cluster has no GPUs now ({cluster_gpus:g}); pass --actors N (or set "
            "execution.max_actors) to request N actors: they wait for GPU nodes, which an autoscaler adds"
        )
    return size if shards is None else min(size, shards)
