"""--append on a run that has had --retry-failed: the plan holds each retried row once per try, and
the append must see the run's rows once (it crashed with ArrowInvalid in check_contains)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from run_fixtures import fake_config

from pipeline.output.run_record import generations, shard_sizes
from pipeline.output.shard_tables import failed_uids
from pipeline.run.plan import plan_run
from pipeline.run.resume import RunRefused, prepare_output
from pipeline.run.retry import plan_retry
from pipeline.storage.layout import PLAN_KEY
from tests.output_fixtures import build_output
from tests.test_append import _fixture_config, bigger_manifest, run_new_shards


@pytest.mark.parametrize("retries", [1, 2])
def test_a_run_retried_once_or_twice_can_still_grow(tmp_path, retries):
    built = build_output(tmp_path / "a", rows=12, shard_size=5)
    config = fake_config(**_fixture_config(built))
    record = built.run_record
    failed = failed_uids(built.store, built.store.committed_shards())
    assert failed  # the fixture's FAIL_MARK rows
    for _ in range(retries):  # the cause is not fixed: every retry fails the same rows again
        record = plan_retry(built.store, record, failed)
        run_new_shards(built, config, record)
    bigger = bigger_manifest(built, tmp_path, 3)
    plan, fresh = plan_run(str(bigger), config)
    appended = prepare_output(built.store, fresh, False, append=True, plan=plan)
    added = generations(appended)[-1]
    assert (added["rows"], added["first_shard"]) == (3, len(shard_sizes(record)))
    stored = pq.read_table(built.store.root / PLAN_KEY)
    new_rows = stored.filter(pc.greater_equal(stored.column("shard_id"), added["first_shard"]))
    assert sorted(new_rows.column("prompt").to_pylist()) == [f"a new prompt #{1000 + i}" for i in range(3)]
    # and a changed row is still refused, named once
    table = pq.read_table(bigger)
    ids = table.column("id").to_pylist()
    ids[0] = "edited"
    changed = tmp_path / "changed.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids)), changed)
    plan, fresh = plan_run(str(changed), config)
    with pytest.raises(RunRefused, match=r"1 row\(s\) of the run changed: uid [0-9a-f]+ \(row 0: id\)"):
        prepare_output(built.store, fresh, False, append=True, plan=plan)
