"""The Ray layer: placement on (logical) GPUs, the deadline policy, and dead actors stopping a run."""

from __future__ import annotations

import pytest
from run_fixtures import build_manifest, fake_config

from actors.deadlines import DeadlinePolicy
from actors.pool import GeneratorPool, PoolError
from pipeline.run.job import run_job


def test_deadline_is_the_floor_until_shards_finish_then_scales_with_observed_time():
    policy = DeadlinePolicy(factor=4.0, first_deadline_s=600.0, min_deadline_s=10.0)
    assert policy.deadline(64) == 600.0
    for rows, seconds in ((10, 5.0), (20, 30.0), (10, 2.0)):  # 0.5, 1.5 and 0.2 s per image
        policy.observe(rows, seconds)
    assert policy.deadline(64) == pytest.approx(4.0 * 0.5 * 64)  # the median per-image time
    assert policy.deadline(2) == 10.0  # never below the floor


@pytest.mark.slow
def test_each_actor_holds_its_own_logical_gpu(ray_cluster, tmp_path):
    # scoring loads torch in the actors; one scorer without weights is enough for that
    config = fake_config(**{"scoring.enabled": True, "scoring.scorers": ["brightness"]})
    pool = GeneratorPool(config.model_dump_json(), str(tmp_path / "out"), size=4, torch_threads=3)
    try:
        infos = pool.wait_ready(timeout_s=120)
    finally:
        pool.shutdown()
    gpu_ids = [info["gpu_ids"] for info in infos]
    assert sorted(gpu_ids) == [["0"], ["1"], ["2"], ["3"]]
    assert all(info["cuda_visible_devices"] == info["gpu_ids"][0] for info in infos)
    assert len({info["pid"] for info in infos}) == 4
    assert all(info["device"] == "cpu" and not info["restarted"] for info in infos)
    assert [info["torch_threads"] for info in infos] == [3] * 4  # the config's, whatever the pool size


@pytest.mark.slow
def test_actors_that_cannot_start_stop_the_run_with_the_reason(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=12)  # two shards: a pool of two
    missing = tmp_path / "no-clip-here"  # only the actors load scoring models: the driver cannot tell
    config = fake_config(**{"scoring.enabled": True, "scoring.options": {"clip_model": str(missing)}})
    with pytest.raises(PoolError) as raised:
        run_job(str(manifest), str(tmp_path / "out"), config, actors=2, live=False)
    message = str(raised.value)
    assert "no generator actor is alive" in message
    assert message.count("its constructor raised") == 2 and "no-clip-here" in message


def test_the_pool_target_is_the_flag_else_every_gpu_never_more_than_the_shards():
    from pipeline.run.execute import pool_target

    assert pool_target(None, 1.0, 4.0, shards=10) == 4  # a fixed cluster: every GPU
    assert pool_target(None, 0.5, 3.0, shards=10) == 6
    assert pool_target(8, 1.0, 2.0, shards=10) == 8  # more than the GPUs present: the rest pend
    assert pool_target(8, 1.0, 2.0, shards=3) == 3
    with pytest.raises(
        PoolError, match=r"no GPUs now \(0\); pass --actors N \(or set execution.max_actors\)"
    ):
        pool_target(None, 1.0, 0.0, shards=3)


@pytest.mark.slow
def test_an_attempt_that_ray_fails_with_another_error_is_retried_not_fatal_to_the_run(ray_cluster, tmp_path):
    # ray.get of a cancelled call raises TaskCancelledError, a RayError that is neither a task's own
    # error nor an actor death (like OutOfMemoryError): the shard is retried, the run goes on.
    import ray

    from actors.scheduler import SchedulerHooks, ShardScheduler
    from pipeline.run.plan import plan_run, write_plan
    from pipeline.storage import open_store

    manifest = build_manifest(tmp_path, rows=6)
    config = fake_config(**{"generator.fake.latency_s": 0.3})  # one shard of 6 rows, about 2 s
    store = open_store(tmp_path / "out")
    write_plan(store, plan_run(str(manifest), config)[0])
    pool = GeneratorPool(config.model_dump_json(), store.uri, size=1)
    cancelled, committed, events = [], [], []

    def cancel_the_first_attempt_once_it_runs(in_flight: dict[int, int]) -> None:
        attempts = pool.slots[0].attempts
        if not cancelled and attempts and attempts[0].started_at is not None:
            cancelled.append(attempts[0].attempt_id)
            ray.cancel(attempts[0].ref)

    hooks = SchedulerHooks(
        on_committed=lambda shard_id, result: committed.append((shard_id, result.attempt_id)),
        on_progress=cancel_the_first_attempt_once_it_runs,
        on_event=events.append,
    )
    scheduler = ShardScheduler(pool, DeadlinePolicy(4.0, 120.0, 30.0), 3, 120.0, hooks)
    try:
        scheduler.run({0: 6})
    finally:
        pool.shutdown()
    assert len(cancelled) == 1 and (0, cancelled[0]) in scheduler.unfinished_attempts
    assert [shard for shard, _ in committed] == [0] and committed[0][1].startswith("2-")
    assert any("shard 0: attempt 1: TaskCancelledError" in event and "retrying" in event for event in events)
    assert store.read_marker(0) is not None


@pytest.mark.slow
def test_an_actor_killed_for_good_mid_run_is_replaced_and_the_run_completes(ray_cluster, tmp_path):
    # An actor that dies for good (here ray.kill without restart, as a node fault that Ray cannot restart
    # would) after the pool has worked is replaced by a fresh actor, so the pool stays at its target.
    import ray

    from actors.scheduler import SchedulerHooks, ShardScheduler
    from pipeline.run.plan import plan_run, write_plan
    from pipeline.storage import open_store

    manifest = build_manifest(tmp_path, rows=48)  # 8 shards of 6
    config = fake_config(**{"generator.fake.latency_s": 0.05})
    store = open_store(tmp_path / "out")
    write_plan(store, plan_run(str(manifest), config)[0])
    pool = GeneratorPool(config.model_dump_json(), store.uri, size=2)
    victim, committed, events = [], [], []

    def kill_actor_0_after_the_first_commit(shard_id: int, result: dict) -> None:
        committed.append(shard_id)
        if not victim and pool.slots[0].attempts:
            victim.append(pool.slots[0].handle)
            ray.kill(pool.slots[0].handle, no_restart=True)

    hooks = SchedulerHooks(on_committed=kill_actor_0_after_the_first_commit, on_event=events.append)
    scheduler = ShardScheduler(pool, DeadlinePolicy(4.0, 120.0, 30.0), 3, 120.0, hooks)
    try:
        scheduler.run({shard: 6 for shard in range(8)})
    finally:
        pool.shutdown()
    assert victim and sorted(committed) == list(range(8))
    assert any(event.startswith("actor 0: dead (") for event in events), events
    assert "actor 0: replaced by a new actor (pending until placed)" in events
    assert pool.slots[0].handle is not victim[0] and pool.slots[0].dead_reason is None
    # the shards the dead actor held were rerun (the one it was generating charged as usual for a crash)
    assert all(store.read_marker(shard) is not None for shard in range(8))
    assert max(ready for _, ready, _ in scheduler.actor_timeline) == 2


def test_a_progress_beat_arriving_after_a_row_announcement_does_not_erase_it(ray_cluster):
    """An async actor may run calls out of order: isolation's culprit must survive a late progress beat
    (the flaky "no row to blame" after a crash), and the count never moves back."""
    import ray

    from actors.generator_actor import HeartbeatActor

    beats = HeartbeatActor.remote()
    ray.get(beats.report.remote("a1", 0, 4, 0, "uid-4"))  # row 4 announced, then it runs
    ray.get(beats.report.remote("a1", 0, 4, 0))  # the beat sent after row 3, arriving late
    assert ray.get(beats.snapshot.remote())["a1"]["running"] == "uid-4"
    ray.get(beats.report.remote("a1", 0, 5, 0))  # row 4 done: nothing runs now
    ray.get(beats.report.remote("a1", 0, 3, 0))  # an older beat still
    beat = ray.get(beats.snapshot.remote())["a1"]
    assert (beat["running"], beat["images_done"]) == (None, 5)
    ray.kill(beats)
