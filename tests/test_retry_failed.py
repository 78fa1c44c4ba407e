"""`stylegen run ... --retry-failed`: the failed rows of a finished run are regenerated into new shards
after the plan's; committed shards stay byte for byte; status, the report and the summary count each row
once (its newest result)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import build_manifest, fake_config, make_image, shard_rows

from manifests.read import read_manifest
from pipeline.dataset.status import collect_status
from pipeline.run.job import run_job
from pipeline.run.resume import RunRefused
from pipeline.storage import open_store

pytestmark = pytest.mark.slow


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_retry_failed_regenerates_only_the_failed_rows_into_new_shards(ray_cluster, tmp_path):
    from pipeline.report.data import gather

    manifest = build_manifest(tmp_path, rows=12)
    table = pq.read_table(manifest)
    styles = table.column("style").to_pylist()
    late = tmp_path / "styles" / "late.png"  # two rows whose style file appears only later
    styles[3] = styles[8] = str(late)
    pq.write_table(
        table.set_column(table.schema.get_field_index("style"), "style", pa.array(styles)), manifest
    )
    output = tmp_path / "out"
    config = fake_config()

    with pytest.raises(RunRefused, match="holds no run to retry"):
        run_job(str(manifest), str(output), config, actors=2, live=False, retry_failed=True)
    first = run_job(str(manifest), str(output), config, actors=2, live=False)
    assert (first.kept, first.failed, first.shards_planned) == (10, 2, 2)
    failed = sorted(row["uid"] for row in shard_rows(output) if row["status"] == "failed")
    before = {
        k: v for k, v in files_of(output).items() if k.startswith(("shards/", "metadata/", "_SUCCESS/"))
    }

    make_image(late, (250, 250, 10))
    summary = run_job(str(manifest), str(output), config, actors=2, live=False, retry_failed=True)
    after = files_of(output)
    assert all(after[key] == data for key, data in before.items())  # committed shards untouched
    assert (summary.shards_planned, summary.shards_committed, summary.images_this_run) == (3, 1, 2)
    assert (summary.rows, summary.kept, summary.failed) == (12, 12, 0)
    retried = pq.read_table(output / "metadata" / "shard-000002.parquet").to_pylist()
    assert sorted(row["uid"] for row in retried) == failed and all(r["status"] == "kept" for r in retried)
    record = json.loads((output / "run.json").read_text())
    assert record["generations"][-1]["retry"] and record["generations"][-1]["first_shard"] == 2

    status = collect_status(open_store(output))
    assert status["samples"] == {"kept": 12, "rejected": 0, "failed": 0}
    assert (status["rows_committed"], status["rows_planned"], status["complete"]) == (12, 12, True)
    report = gather(open_store(output))
    assert report.status_counts == {"kept": 12, "rejected": 0, "failed": 0}
    assert sorted(report.rows.column("uid").to_pylist()) == sorted(
        read_manifest(str(manifest)).column("uid").to_pylist()
    )

    # nothing failed any more: nothing to retry; a plain rerun resumes the grown run
    again = run_job(str(manifest), str(output), config, actors=2, live=False, retry_failed=True)
    assert (again.shards_planned, again.shards_committed) == (3, 0)
    plain = run_job(str(manifest), str(output), config, actors=2, live=False)
    assert (plain.shards_resumed, plain.kept, plain.failed) == (3, 12, 0)
