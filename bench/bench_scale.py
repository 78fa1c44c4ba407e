"""Cost of an output's size: no-op resume, status, report and --append against the number of shards.

Builds a real output of N one-row shards through the project's own commit path (ShardWorker with the
fake generator: tiny tar, one-row parquet, marker, publish), on a local folder and on SeaweedFS
(`weed mini`, when installed), then times whole `stylegen` processes on it:

    resume    `stylegen run` of the same manifest (nothing to do)
    status    `stylegen status --json`
    report    `stylegen report -o FILE`
    append    `stylegen run BIGGER --append` (4 more rows)

each twice: as an output written before the commit ledger (every marker read, one GET each: the
`_ledger/` folder removed) and with the ledger the driver keeps. `ratio_*` is markers / ledger.
The report's reading of the shard parquets is also timed in this process, old against new on the same
output: `report_read_old_s` one GET per parquet through the store in 16 threads, every report column,
concatenated (what the report did before); `report_read_new_s` the parquets as one pyarrow dataset
(pipeline.output.shard_dataset: Arrow's threads, the small columns only); `ratio_report_read` old / new.
Each is measured on two outputs, of N/4 and N shards: the difference is the per-shard cost, which extrapolates
the time at N to 10^6 shards (`*_1m_s`, an estimate: a process's fixed start-up is not multiplied).

    .venv/bin/python bench/bench_scale.py [--shards 2000] [--s3-shards 1000] [--threads 8]

Ends with one line: shards=.. resume_ledger_s=.. resume_markers_s=.. ratio_resume=.. status_ledger_s=..
... s3_resume_ledger_s=.. ... resume_1m_s=.. (s3 estimates)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from run_fixtures import build_manifest, fake_config  # noqa: E402

from pipeline.run.plan import plan_run, write_plan  # noqa: E402
from pipeline.storage import open_store  # noqa: E402
from pipeline.storage.layout import LEDGER_PREFIX  # noqa: E402

APPENDED_ROWS = 4


def build_output(folder: Path, uri: str, shards: int, threads: int, storage: dict) -> tuple[Path, Path]:
    """N one-row shards committed by ShardWorkers (the worker's own commit path), as a run leaves them;
    returns (manifest, config file)."""
    from pipeline.models.fake_generator import FakeGenerator
    from pipeline.output.run_record import store_run_record
    from pipeline.worker.shard_worker import ShardWorker

    manifest = build_manifest(folder, rows=shards + APPENDED_ROWS, styles=4, composition_every=0)
    import pyarrow.parquet as pq

    table = pq.read_table(manifest)
    pq.write_table(table.slice(0, shards), folder / "manifest.parquet")
    pq.write_table(table, folder / "bigger.parquet")
    config = fake_config(shard_size=1, storage=storage, **{"generator.fake.size": 8})
    config_file = folder / "run.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    store = open_store(uri, **storage)
    plan, record = plan_run(str(folder / "manifest.parquet"), config)
    store_run_record(store, record)
    write_plan(store, plan)

    def commit_range(first: int) -> None:
        generator = FakeGenerator(config.generator.fake)
        info = {"generator": "fake", "size": config.generator.fake.size}
        worker = ShardWorker(generator, None, None, store, config, model_info=info)
        try:
            for shard_id in range(first, shards, threads):
                worker.run_shard(shard_id, f"bench-{shard_id}")
        finally:
            worker.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(commit_range, range(threads)))
    return folder / "manifest.parquet", config_file


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def measure(folder: Path, uri: str, shards: int, threads: int, storage: dict, env: dict) -> dict:
    started = time.perf_counter()
    manifest, config_file = build_output(folder, uri, shards, threads, storage)
    build_s = time.perf_counter() - started
    store = open_store(uri, **storage)
    stylegen = [sys.executable, "-m", "pipeline.cli.app"]
    reach = ["--config", str(config_file)]
    commands = {
        "resume": [*stylegen, "run", str(manifest), "--output", uri, *reach, "--actors", "1"],
        "status": [*stylegen, "status", uri, "--json", *reach],
        "report": [*stylegen, "report", uri, "-o", str(folder / "report.html"), *reach],
    }
    figures = {"build_s": build_s}
    for name, command in commands.items():
        store.delete([info.key for info in store.list(LEDGER_PREFIX)])  # as before the ledger
        figures[f"{name}_markers_s"] = timed(command, env)
        if not store.list(LEDGER_PREFIX):  # status and report only read: the ledger comes from a run
            timed(commands["resume"], env)
        figures[f"{name}_ledger_s"] = timed(command, env)
    bigger = [*stylegen, "run", str(folder / "bigger.parquet"), "--output", uri, *reach, "--append"]
    figures["append_s"] = timed([*bigger, "--actors", "1"], env)
    for name in commands:
        figures[f"ratio_{name}"] = figures[f"{name}_markers_s"] / figures[f"{name}_ledger_s"]
    figures.update(time_report_read(store))
    return figures


def time_report_read(store) -> dict:
    """The report's read of every committed shard parquet, before (one GET per parquet through the
    store, every report column, concatenated) and now (one pyarrow dataset, the small columns)."""
    from pipeline.columns import SCORE_PREFIX
    from pipeline.output.shard_dataset import ShardDataset
    from pipeline.output.shard_tables import newest_rows, read_shard_tables
    from pipeline.report.data import TIME_PREFIX, report_columns

    before = ("uid", "shard_id", "status", "reason", "filter_rule", "style", "content", "prompt")
    markers = store.committed_shards()
    started = time.perf_counter()
    keep = lambda name: name in before or name.startswith((SCORE_PREFIX, TIME_PREFIX))  # noqa: E731
    old = newest_rows(read_shard_tables(store, markers, keep=keep)[0])
    old_s = time.perf_counter() - started
    started = time.perf_counter()
    source = ShardDataset(store, markers)
    new = newest_rows(source.read(report_columns(source)))
    new_s = time.perf_counter() - started
    if old.column("uid").to_pylist() != new.column("uid").to_pylist():
        raise SystemExit("the report's old and new reads disagree on the rows")
    return {"report_read_old_s": old_s, "report_read_new_s": new_s, "ratio_report_read": old_s / new_s}


def measure_sizes(folder: Path, uri: str, shards: int, threads: int, storage: dict, env: dict) -> dict:
    """The figures at N shards, and each command's extrapolation to 10^6 shards from N/4 and N."""
    small = max(1, shards // 4)
    at_small = measure(folder / "small", f"{uri}-small", small, threads, storage, env)
    figures = measure(folder / "full", uri, shards, threads, storage, env)
    for name in ("resume", "status", "report"):
        for kind in ("markers", "ledger"):
            key = f"{name}_{kind}_s"
            figures[f"{name}_{kind}_1m_s"] = _at_1m(at_small[key], figures[key], small, shards)
    for kind in ("old", "new"):
        key = f"report_read_{kind}_s"
        figures[f"report_read_{kind}_1m_s"] = _at_1m(at_small[key], figures[key], small, shards)
    return figures


def _at_1m(small_s: float, full_s: float, small: int, shards: int) -> float:
    """The time at 10^6 shards, extrapolated from the per-shard slope between `small` and `shards`."""
    return full_s + max(0.0, (full_s - small_s) / (shards - small)) * (1e6 - shards)


def show(label: str, shards: int, figures: dict) -> None:
    print(f"{label}: {shards} one-row shards built in {figures['build_s']:.1f} s")
    for name in ("resume", "status", "report"):
        markers, ledger = figures[f"{name}_markers_s"], figures[f"{name}_ledger_s"]
        print(
            f"  {name:7} markers {markers:7.2f} s   ledger {ledger:7.2f} s   ratio {markers / ledger:5.2f}"
            f"   at 10^6 shards (estimate): markers {figures[f'{name}_markers_1m_s']:6.0f} s, "
            f"ledger {figures[f'{name}_ledger_1m_s']:6.0f} s"
        )
    print(f"  append of {APPENDED_ROWS} rows: {figures['append_s']:.2f} s")
    print(
        f"  report's parquet read: old {figures['report_read_old_s']:6.2f} s   new "
        f"{figures['report_read_new_s']:6.2f} s   ratio {figures['ratio_report_read']:5.2f}   at 10^6 shards "
        f"(estimate): old {figures['report_read_old_1m_s']:6.0f} s, "
        f"new {figures['report_read_new_1m_s']:6.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=2000)
    parser.add_argument("--s3-shards", type=int, default=1000, help="0 skips SeaweedFS")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    summary = {"shards": args.shards}
    with tempfile.TemporaryDirectory(prefix="stylegen-bench-scale-") as name, ExitStack() as stack:
        folder = Path(name)
        local = measure_sizes(
            folder / "local", str(folder / "local" / "out"), args.shards, args.threads, {}, env
        )
        show("local folder", args.shards, local)
        summary.update({key: round(value, 3) for key, value in local.items()})
        from s3_fixtures import _new_bucket, start_seaweedfs, weed_binary

        if args.s3_shards and weed_binary():
            (folder / "weed").mkdir()
            server = stack.enter_context(start_seaweedfs(folder / "weed", "bench", "bench-secret"))
            bucket = _new_bucket(server.endpoint_url, "bench", "bench-secret")
            s3_env = {**env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
            storage = {"endpoint_url": server.endpoint_url, "addressing_style": "path"}
            uri = bucket.uri("runs/scale")
            s3 = measure_sizes(folder / "s3", uri, args.s3_shards, args.threads, storage, s3_env)
            show(f"SeaweedFS ({server.endpoint_url})", args.s3_shards, s3)
            summary["s3_shards"] = args.s3_shards
            summary.update({f"s3_{key}": round(value, 3) for key, value in s3.items()})
        elif args.s3_shards:
            print("SeaweedFS (weed) not installed: the S3 figures are skipped")
        shutil.rmtree(folder / "local", ignore_errors=True)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
