"""The console's failure reasons at the end of a run count each row once, as its newest result: after
--retry-failed a row that failed again is one row, not one per try (no Ray: the real ShardWorker)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pandas as pd
from run_fixtures import fake_config

from pipeline.output.shard_tables import failed_uids
from pipeline.run.retry import plan_retry
from pipeline.run.summary import failed_rows_note
from tests.output_fixtures import build_output
from tests.test_append import _fixture_config, run_new_shards


def test_reasons_count_each_failed_row_once_after_retries(tmp_path):
    built = build_output(tmp_path, rows=12, shard_size=5)
    config = fake_config(**_fixture_config(built))
    record = built.run_record
    failed = failed_uids(built.store, built.store.committed_shards())
    for _ in range(2):  # the cause is not fixed: every retry fails the same rows again
        record = plan_retry(built.store, record, failed)
        run_new_shards(built, config, record)

    markers = built.store.committed_shards()
    frame = pd.concat(pd.read_parquet(path) for path in sorted((tmp_path / "output" / "metadata").glob("*")))
    newest = frame.sort_values("shard_id").groupby("uid").tail(1)  # each uid's newest result
    expected = Counter(newest.loc[newest["status"] == "failed", "reason"].str.strip())
    assert sum(expected.values()) == len(failed) and (frame["status"] == "failed").sum() == 3 * len(failed)

    note = failed_rows_note(built.store, SimpleNamespace(failed=len(failed), report_uri=None), markers)
    lines = note.splitlines()
    assert lines[0] == f"{len(failed)} row(s) failed; most frequent reasons:"
    top = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:3]
    assert lines[1 : 1 + len(top)] == [f"  {count} x {reason}" for reason, count in top]
