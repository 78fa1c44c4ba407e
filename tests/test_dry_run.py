"""`stylegen run ... --dry-run`: the plan and its bill, with nothing written; its counts equal an
independent count of the manifest, its GPU-hours the per-image figure times each row's area and steps,
and the quota's added rows the expected shortfall at the assumed acceptance."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.run.dry_run import PRESET_STEPS, SECONDS_PER_IMAGE, dry_run
from pipeline.run_config import RunConfig


def sized_manifest(folder, rows: int = 30):
    sizes = [(1024, 1024), (1152, 896), (None, None)]
    table = pa.table(
        {
            "prompt": [f"p{i}" for i in range(rows)],
            "style": [f"{folder}/style-{i % 4}.png" for i in range(rows)],
            "width": pa.array([sizes[i % 3][0] for i in range(rows)], pa.int64()),
            "height": pa.array([sizes[i % 3][1] for i in range(rows)], pa.int64()),
            "steps": pa.array([10 if i % 5 == 0 else None for i in range(rows)], pa.int64()),
        }
    )
    path = folder / "manifest.parquet"
    pq.write_table(table, path)
    return path


def test_dry_run_counts_and_prices_the_plan_and_the_quota(tmp_path):
    manifest = sized_manifest(tmp_path)
    config = RunConfig.load(
        None,
        {
            "preset": "stable-cascade",
            "shard_size": 8,
            "scoring.filters": ["clip_t >= 0.2"],
            "quota": {"kept": 5, "max_factor": 3},
        },
    )
    bill = dry_run(str(manifest), config, assume_acceptance=0.4)

    frame = pd.read_parquet(manifest)
    frame[["width", "height"]] = frame[["width", "height"]].fillna(1024).astype(int)
    assert bill.rows == 30 and bill.shards == math.ceil(30 / 8)
    assert bill.buckets == {k: len(g) for k, g in frame.groupby(["width", "height"])}
    per_image = SECONDS_PER_IMAGE["stable-cascade"][0]
    steps = frame.steps.fillna(PRESET_STEPS["stable-cascade"]) / PRESET_STEPS["stable-cascade"]
    seconds = per_image * frame.width * frame.height / 1024**2 * steps
    assert math.isclose(bill.gpu_hours, seconds.sum() / 3600)
    # 4 styles of 7-8 rows: 0.4 x 8 = 3.2 < 5, so each needs ceil(5 / 0.4) = 13 rows in all, capped at 3x
    planned = frame.groupby("style").size()
    added = [min(math.ceil(5 / 0.4) - p, 2 * p) for p in planned]
    assert (bill.groups, bill.groups_short) == (4, 4)
    assert bill.quota_rows_expected == sum(added) and bill.quota_rows_max == int((2 * planned).sum())
    assert "FLOP estimate" in bill.cost_source


def test_dry_run_from_the_cli_writes_nothing(tmp_path):
    manifest = sized_manifest(tmp_path)
    output = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", str(manifest), "--output", str(output), "--preset", "stable-cascade", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert not output.exists()
    assert "rows 30 in 1 shards of 64" in result.output
    assert "1152x896 10 rows" in result.output and "GPU-hours for the planned rows" in result.output


def test_a_streamed_plan_gives_the_same_bill(tmp_path, monkeypatch):
    """A manifest big enough to be planned through disk is priced from the plan file, batch by batch."""
    import pipeline.run.plan as plan_module

    manifest = sized_manifest(tmp_path, rows=40)
    config = RunConfig.load(None, {"preset": "stable-cascade", "shard_size": 8, "quota": {"kept": 5}})
    in_memory = dry_run(str(manifest), config, assume_acceptance=0.3)
    import manifests.plan_stream as plan_stream

    streamed_plans = []
    stream = plan_stream.stream_plan
    monkeypatch.setattr(
        plan_stream,
        "stream_plan",
        lambda *a, **k: streamed_plans.append(stream(*a, **k)) or streamed_plans[-1],
    )
    monkeypatch.setattr(plan_module, "STREAM_ROWS", 1)
    streamed = dry_run(str(manifest), config, assume_acceptance=0.3)
    assert len(streamed_plans) == 1 and streamed == in_memory
