"""Fixtures for the distributed-run tests: small manifests with real image files, fake-generator run
configs, a local Ray with logical GPUs, and readers of an output's shard files."""

from __future__ import annotations

import io
import json
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.run_config import RunConfig

PROMPTS = ["a horse", "a city at night", "a red boat", "a portrait", "a forest", "a cat on a chair"]


def make_image(path: Path, colour: tuple[int, int, int], size: int = 32, stripes: int = 4) -> Path:
    """A small striped PNG: distinct per colour, so the fake generator's output depends on the style."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = colour
    pixels[:, :: max(1, size // stripes)] = 255 - np.array(colour, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def build_manifest(
    folder: Path,
    rows: int = 24,
    *,
    styles: int = 3,
    composition_every: int = 5,
    extra_column: bool = True,
    name: str = "manifest.parquet",
) -> Path:
    """A manifest of `rows` distinct rows over `styles` style images; every `composition_every`-th row
    has a content image; an extra `batch_tag` column to check it reaches the metadata."""
    style_paths = [
        make_image(
            folder / "styles" / f"style {i}.png", ((60 * i) % 256, (90 * i + 40) % 256, (30 * i + 200) % 256)
        )
        for i in range(styles)
    ]
    content = make_image(folder / "contents" / "content.png", (10, 200, 10), stripes=2)
    table = {
        "prompt": [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(rows)],
        "style": [str(style_paths[i % styles]) for i in range(rows)],
        "content": [
            str(content) if composition_every and i % composition_every == 0 else None for i in range(rows)
        ],
        "id": [f"user-{i}" for i in range(rows)],
    }
    if extra_column:
        table["batch_tag"] = [f"tag{i % 4}" for i in range(rows)]
    path = folder / name
    pq.write_table(pa.table(table), path)
    return path


def fake_config(**overrides: Any) -> RunConfig:
    """A run with the FakeGenerator, scoring off, small shards and short deadlines (tests only)."""
    data: dict[str, Any] = {
        "preset": "tiny",
        "shard_size": 6,
        "generator": {"kind": "fake", "fake": {"size": 16}},
        "scoring": {"enabled": False},
        "execution": {
            "batch_size": 3,
            "first_deadline_s": 120,
            "min_deadline_s": 30,
            "actor_start_timeout_s": 120,
        },
    }
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunConfig.model_validate(data)


def planned_uids(manifest: Path, shard_id: int) -> list[str]:
    """The uids the plan puts in `shard_id` (fake-generator config, default shard size)."""
    from pipeline.run.plan import plan_run

    plan, _ = plan_run(str(manifest), fake_config())
    return plan.shard(shard_id).column("uid").to_pylist()


def shard_rows(output: Path) -> list[dict]:
    """Every row of every shard parquet under a local output."""
    rows = []
    for path in sorted((output / "metadata").glob("shard-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def tar_samples(path: Path) -> dict[str, dict]:
    """uid -> {"json": parsed metadata, "txt": caption, "image": PIL image} of a shard tar."""
    samples: dict[str, dict] = {}
    for name, data in tar_members(path).items():
        uid, ext = name.split(".", 1)
        if ext == "json":
            samples.setdefault(uid, {})["json"] = json.loads(data)
        elif ext == "txt":
            samples.setdefault(uid, {})["txt"] = data.decode("utf-8")
        else:
            samples.setdefault(uid, {})["image"] = Image.open(io.BytesIO(data)).convert("RGB")
            samples[uid]["ext"] = ext
    return samples


RAY_OPTIONS = dict(
    address="local",
    num_cpus=2,
    num_gpus=4,
    include_dashboard=False,
    log_to_driver=False,
    # Ray's default is 10 s: a test that reads the run's metrics on the node would wait that long
    _system_config={"metrics_report_interval_ms": 1000},
)
_shared: dict[str, str] = {}  # the GCS address of the suite's shared local Ray, once started


def local_ray():
    """The suite's shared local Ray with 4 logical GPUs, behind conftest's module-scoped `ray_cluster`.
    A Ray start costs seconds, so it is started once and left running for the next module; conftest
    runs those modules one after another and shuts it down at the end. A module that leaves actors
    holding resources hands the next one a fresh Ray instead."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address != _shared.get("address"):
        ray.shutdown()  # a Ray some test started for itself: not ours to reuse
    if not ray.is_initialized():
        ray.init(**RAY_OPTIONS)
        _shared["address"] = ray.get_runtime_context().gcs_address
    yield ray
    if not resources_released(ray):
        stop_shared_ray()


def resources_released(ray, timeout_s: float = 10) -> bool:
    """Whether every CPU and GPU of the cluster is free again (killed actors release theirs a moment
    later), within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        if all(free.get(name, 0) >= total.get(name, 0) for name in ("CPU", "GPU")):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def stop_shared_ray() -> None:
    """Shut down the shared local Ray if it runs (for a test that needs Ray down or a Ray of its own)."""
    import ray

    if _shared.pop("address", None) is not None and ray.is_initialized():
        ray.shutdown()


@contextmanager
def own_ray():
    """A local Ray of this test's own, started now (so its actors inherit the environment as it is
    now, e.g. a moto endpoint) and shut down on exit."""
    import ray

    stop_shared_ray()
    assert not ray.is_initialized(), "another test left Ray initialized in this process"
    ray.init(**RAY_OPTIONS)
    try:
        yield ray
    finally:
        ray.shutdown()


def recording_pools(monkeypatch) -> list:
    """Every GeneratorPool the driver builds, so the test can read the actors' ready() answers."""
    import actors.pool

    pools: list[actors.pool.GeneratorPool] = []

    class RecordingPool(actors.pool.GeneratorPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(actors.pool, "GeneratorPool", RecordingPool)
    return pools


def reference_tars(tmp_path: Path, manifest: Path, config, shards: int) -> dict[str, bytes]:
    """Every shard's tar made by one ShardWorker in this process, without Ray and without latency."""
    from pipeline.run.plan import plan_run, write_plan
    from pipeline.storage import open_store
    from pipeline.worker.shard_worker import ShardWorker

    store = open_store(tmp_path / "reference")
    plan, _ = plan_run(str(manifest), config)
    write_plan(store, plan)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        for shard_id in range(shards):
            worker.run_shard(shard_id, f"reference-{shard_id}")
    finally:
        worker.close()
    return {p.name: p.read_bytes() for p in sorted((tmp_path / "reference" / "shards").glob("*.tar"))}
