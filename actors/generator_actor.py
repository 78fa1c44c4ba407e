"""The Ray actors: one GeneratorActor per GPU wrapping a ShardWorker, and a HeartbeatActor they report to.

GeneratorActor holds its GPU for life (`num_gpus`), reserves no CPU (`num_cpus=0`: GPU actors must never
wait behind CPU bookkeeping), loads the models once in `__init__`, and runs shards on request. It is a
threaded actor so two shards can be in flight (one generating, one uploading) and a health probe is
answered while a shard runs. Ray restarts it after a crash or a `ray.kill` (`max_restarts=-1`); calls
are never retried by Ray (`max_task_retries=0`): the driver resubmits, and the commit is idempotent.

Heartbeats go to the async HeartbeatActor as fire-and-forget calls, so reporting never blocks a worker
and the driver reads everyone's heartbeats with one call. An actor also reports there the moment its
constructor starts: until then it is waiting for a GPU (pending capacity, which the autoscaler scales
on), after that it is loading models (which has a deadline).
"""

from __future__ import annotations

import os
import sys
import time

import ray

# Calls that may run at once in one GeneratorActor: two shards (see the pool) plus a probe.
ACTOR_CONCURRENCY = 3


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)  # its calls are idempotent
class HeartbeatActor:
    """Latest heartbeat per shard attempt (images done, the row running in isolation mode), and each
    generator actor's latest constructor start."""

    def __init__(self):
        self._attempts: dict[str, dict] = {}
        self._starts: dict[int, dict] = {}  # actor index -> its latest constructor start

    async def actor_starting(self, actor_index: int, pid: int, node_id: str) -> None:
        self._starts[actor_index] = {"pid": pid, "node_id": node_id, "at": time.time()}

    async def starts(self) -> dict[int, dict]:
        return dict(self._starts)

    async def report(
        self, attempt_id: str, shard_id: int, images_done: int, actor_index: int, running: str | None = None
    ) -> None:
        previous = self._attempts.get(attempt_id)
        if previous is not None:
            # Calls to an async actor may run out of order: a progress beat sent before a row was
            # announced (isolation mode) must not erase that row, nor move the count back.
            if running is None and images_done <= previous["images_done"]:
                running = previous["running"]
            images_done = max(images_done, previous["images_done"])
        self._attempts[attempt_id] = {
            "shard_id": shard_id,
            "images_done": images_done,
            "actor_index": actor_index,
            "running": running,  # isolation mode: the uid of the row that runs now
            "at": time.time(),
        }

    async def snapshot(self) -> dict[str, dict]:
        return dict(self._attempts)

    async def forget(self, attempt_ids: list[str]) -> None:
        for attempt_id in attempt_ids:
            self._attempts.pop(attempt_id, None)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=ACTOR_CONCURRENCY)
class GeneratorActor:
    def __init__(
        self, config_json: str, output: str, actor_index: int, heartbeats_name: str, torch_threads: int
    ):
        self._started = time.time()
        self._index = actor_index
        # By name, not handle: a handle argument would live in the object store, which Ray warns makes
        # restarts fragile; plain arguments are inlined into the actor's creation spec.
        self._heartbeats = ray.get_actor(heartbeats_name)
        context = ray.get_runtime_context()
        self._heartbeats.actor_starting.remote(actor_index, os.getpid(), context.get_node_id())
        from pipeline.run_config import RunConfig
        from pipeline.worker.result import RanOn
        from pipeline.worker.shard_worker import ShardWorker

        ran_on = RanOn(node_id=context.get_node_id(), actor_id=context.get_actor_id())

        config = RunConfig.model_validate_json(config_json)
        device = "cpu"
        if config.generator.kind != "fake" or config.scoring.enabled:  # a fake run without scores skips torch
            import torch

            # Ray sets OMP_NUM_THREADS=1 in num_cpus=0 actors; the run config's fixed count instead.
            torch.set_num_threads(torch_threads)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = device
        self._worker = ShardWorker.from_config(
            config,
            output,
            device=device,
            heartbeat=self._heartbeat,
            row_started=self._row_started,
            ran_on=ran_on,
        )
        self._load_s = time.time() - self._started

    def _heartbeat(self, attempt_id: str, shard_id: int, images_done: int) -> None:
        self._heartbeats.report.remote(attempt_id, shard_id, images_done, self._index)

    def _row_started(self, attempt_id: str, shard_id: int, images_done: int, uid: str) -> None:
        """Isolation mode: wait until the heartbeat actor has it, so a crash right after cannot lose it."""
        ray.get(
            self._heartbeats.report.remote(attempt_id, shard_id, images_done, self._index, uid), timeout=60
        )

    def ready(self) -> dict:
        """Where this actor runs and what it holds; also the driver's health probe after a failure."""
        torch = sys.modules.get("torch")
        context = ray.get_runtime_context()
        return {
            "actor_index": self._index,
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "actor_id": context.get_actor_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": self._device,
            "torch_threads": torch.get_num_threads() if torch else None,
            "restarted": context.was_current_actor_reconstructed,
            "load_s": round(self._load_s, 3),
        }

    def run_shard(self, shard_id: int, attempt_id: str, culprits: dict[str, str] | None = None) -> dict:
        return self._worker.run_shard(shard_id, attempt_id, culprits)
