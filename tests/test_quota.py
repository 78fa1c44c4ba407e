"""Quotas (run config `quota`, pipeline/run/quota.py): short groups are reseeded until they hold `kept`
samples, within `max_rounds` and `max_factor`; reseeded rows have their own stable uids linked to the
planned row; a run stopped between rounds resumes to the same samples; a finished run has nothing to do.

The end-to-end runs use the fake generator and the `brightness` scorer with a `brightness >= 0.5` filter:
a fake image is half its style's mean colour and half seeded noise, so a white style is always kept, a
black one never, and a mid-grey one about half the time."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import fake_config, make_image, tar_members

from manifests.reseed import reseed_rows, reseed_seed
from manifests.uid import compute_uid
from pipeline.run.quota import GroupState, QuotaTracker
from pipeline.run.stop import RunStopped
from pipeline.run_config import ConfigError, QuotaSection

COLOURS = {"white": (255, 255, 255), "grey": (128, 128, 128), "black": (0, 0, 0)}
ROWS_PER_STYLE = 6
KEPT = 5
FACTOR = 4


def quota_manifest(folder: Path) -> Path:
    styles = {
        name: str(make_image(folder / "styles" / f"{name}.png", colour)) for name, colour in COLOURS.items()
    }
    rows = [(name, i) for name in COLOURS for i in range(ROWS_PER_STYLE)]
    table = pa.table(
        {
            "prompt": [f"a {name} thing #{i}" for name, i in rows],
            "style": [styles[name] for name, _ in rows],
            "shade": [name for name, _ in rows],
            # fixed seeds: the planned rows' images do not depend on the temp folder (uids do)
            "seed": pa.array([100 + i for _, i in rows], pa.int64()),
        }
    )
    path = folder / "manifest.parquet"
    pq.write_table(table, path)
    return path


def quota_config(**quota):
    return fake_config(
        **{
            "scoring.enabled": True,
            "scoring.scorers": ["brightness"],
            "scoring.filters": ["brightness >= 0.5"],
            "quota": {"per": "shade", "kept": KEPT, "max_rounds": 3, "max_factor": FACTOR, **quota},
        }
    )


def output_rows(output: Path) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted((output / "metadata").glob("*.parquet"))])


def kept_samples(output: Path) -> dict[str, tuple[bytes, dict]]:
    """uid -> (image bytes, json without shard_id) of every kept sample in the tars."""
    samples: dict[str, tuple[bytes, dict]] = {}
    for tar in sorted((output / "shards").glob("*.tar")):
        members = tar_members(tar)
        for name, data in members.items():
            uid, ext = name.split(".", 1)
            if ext == "png":
                meta = json.loads(members[f"{uid}.json"])
                meta.pop("shard_id")
                assert uid not in samples, f"{uid} is in two tars"
                samples[uid] = (data, meta)
    return samples


# --- reseeded rows --------------------------------------------------------------------------------


def test_reseeded_rows_have_distinct_stable_uids_linked_to_their_origin():
    planned = pa.table(
        {
            "uid": [compute_uid("s.png", None, "a", None), compute_uid("s.png", "c.png", "b", 7)],
            "row": [0, 1],
            "prompt": ["a", "b"],
            "style": ["s.png", "s.png"],
            "content": [None, "c.png"],
            "id": ["x", "y"],
            "seed": pa.array([None, 7], pa.int64()),
        }
    )
    rows = reseed_rows(planned, 2, 5)
    again = reseed_rows(planned, 2, 5)
    assert rows.equals(again)
    origins, uids = planned.column("uid").to_pylist(), rows.column("uid").to_pylist()
    assert rows.column("origin_uid").to_pylist() == [origins[i % 2] for i in range(5)]
    assert rows.column("quota_round").to_pylist() == [2] * 5
    for k, row in enumerate(rows.to_pylist()):
        copy = k // 2  # the planned rows cycle: copy 0 of each, then copy 1 of each, ...
        message = b"stylegen-reseed-v1" + b"".join(
            b"S" + str(len(str(v).encode())).encode() + b":" + str(v).encode()
            for v in (row["origin_uid"], 2, copy)
        )
        assert row["seed"] == int.from_bytes(hashlib.sha256(message).digest()[:8], "big") & (2**63 - 1)
        assert row["seed"] == reseed_seed(row["origin_uid"], 2, copy)
        assert row["uid"] == compute_uid(row["style"], row["content"], row["prompt"], row["seed"])
    assert len(set(uids)) == 5 and not set(uids) & set(origins)
    assert reseed_rows(planned, 3, 5).column("uid").to_pylist() != uids  # another round, other seeds


def test_rows_for_follows_the_measured_yield_within_the_limits():
    tracker = QuotaTracker(QuotaSection(kept=8, max_rounds=3, max_factor=4))
    tracker.groups["a"] = GroupState(planned=10, generated=10, kept=3, rejected=7)
    optimistic = 0.3 + math.sqrt(0.3 * 0.7 / 10)  # before the last round: one standard error up
    assert tracker.rows_for("a") == math.ceil(5 / optimistic)  # 5 more at 30 % kept
    tracker.groups["a2"] = GroupState(planned=10, generated=20, rounds=2, kept=6, rejected=14)
    assert tracker.rows_for("a2") == math.ceil(2 / 0.3)  # the last round plans at the estimate
    tracker.groups["b"] = GroupState(planned=10, generated=10, rejected=10)
    assert tracker.rows_for("b") == 30  # nothing kept yet: 1/11 assumed, 88 rows, capped at 4 x 10 - 10
    tracker.groups["c"] = GroupState(planned=10, generated=10, kept=2, failed=8)
    assert tracker.rows_for("c") == math.ceil(6 / (0.2 + math.sqrt(0.2 * 0.8 / 10)))  # failed rows count
    tracker.groups["d"] = GroupState(planned=10, generated=10, failed=10)
    assert tracker.rows_for("d") == 0  # every row failed: broken inputs, no reseeding
    tracker.groups["e"] = GroupState(planned=10, generated=30, rounds=3, kept=4, rejected=26)
    assert tracker.rows_for("e") == 0  # max_rounds used
    tracker.groups["f"] = GroupState(planned=10, generated=38, rounds=1, kept=4, rejected=34)
    assert tracker.rows_for("f") == 2  # the last 2 rows of 4 x 10
    tracker.groups["g"] = GroupState(planned=10, generated=10, kept=8, rejected=2)
    assert tracker.rows_for("g") == 0
    reasons = {o.group: o.reason for o in tracker.outcomes()}
    assert reasons["d"].startswith("failed rows") and reasons["g"] is None
    assert reasons["e"].startswith("max_rounds 3 reached") and reasons["b"].startswith("acceptance too low")


def test_a_quota_on_a_column_the_manifest_lacks_is_refused_naming_the_columns(tmp_path):
    from pipeline.run.plan import plan_run

    manifest = quota_manifest(tmp_path)
    with pytest.raises(ConfigError, match=r"quota.per: 'artist' is not a column .*shade"):
        plan_run(str(manifest), quota_config(per="artist"))


# --- whole runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, tmp_path_factory):
    """(manifest, output, summary) of one quota run, shared by the tests below."""
    from pipeline.run.job import run_job

    folder = tmp_path_factory.mktemp("quota")
    manifest = quota_manifest(folder / "in")
    summary = run_job(str(manifest), str(folder / "out"), quota_config(), actors=1)
    return manifest, folder / "out", summary


def test_quota_run_reaches_the_target_where_it_can_and_says_why_not(undisturbed):
    from pipeline.dataset.status import collect_status
    from pipeline.run.job import run_job
    from pipeline.storage import open_store

    manifest, output, summary = undisturbed

    rows = output_rows(output)
    assert rows["uid"].is_unique
    kept = rows[rows.status == "kept"].groupby("extra_shade").size().reindex(list(COLOURS), fill_value=0)
    generated = rows.groupby("extra_shade").size()
    groups = {group["group"]: group for group in summary.quota}
    assert {g: groups[g]["kept"] for g in COLOURS} == kept.to_dict()
    assert {g: groups[g]["rows"] for g in COLOURS} == generated.to_dict()
    # white keeps every planned row: no reseeding; grey reaches the target by reseeding; black never can
    assert groups["white"] | {"group": None} == {
        "group": None,
        "target": KEPT,
        "kept": ROWS_PER_STYLE,
        "rows": ROWS_PER_STYLE,
        "rounds": 0,
        "reason": None,
    }
    assert (
        groups["grey"]["reason"] is None and groups["grey"]["kept"] >= KEPT and groups["grey"]["rounds"] >= 1
    )
    assert groups["black"]["kept"] == 0 and groups["black"]["rows"] == FACTOR * ROWS_PER_STYLE
    assert groups["black"]["reason"].startswith("acceptance too low: 0 kept of 24 rows")
    # every reseeded row names a planned row of its own group and its round
    reseeded = rows[rows.origin_uid.notna()]
    planned = rows[rows.origin_uid.isna()].set_index("uid")
    assert (planned.quota_round == 0).all() and len(planned) == 3 * ROWS_PER_STYLE
    assert (reseeded.origin_uid.map(planned.extra_shade) == reseeded.extra_shade).all()
    assert reseeded.quota_round.between(1, 3).all()
    assert summary.rows == len(rows) and summary.kept == int(kept.sum())
    # status and summary.json say the same; a rerun has nothing to do
    status = collect_status(open_store(str(output)))
    assert status["quota"] == summary.quota and status["rows_planned"] == len(rows)
    assert json.loads((output / "summary.json").read_text())["quota"] == summary.quota
    assert "Quota" in (output / "report.html").read_text()
    again = run_job(str(manifest), str(output), quota_config(), actors=1)
    assert again.shards_committed == 0 and again.quota == summary.quota


def test_sigterm_between_rounds_resumes_to_the_same_samples(undisturbed, tmp_path, monkeypatch):
    """SIGTERM arrives as the first reseeding round is about to be planned: the run stops after its
    planned shards; the rerun plans the rounds and ends with the samples of an undisturbed run."""
    import pipeline.run.execute as execute
    from pipeline.run.job import run_job

    manifest, undisturbed, _ = undisturbed

    original = execute.plan_reseeds
    calls = Counter()

    def signalled(store, tracker):
        calls["reseed"] += 1
        os.kill(os.getpid(), signal.SIGTERM)
        return {}, {}

    monkeypatch.setattr(execute, "plan_reseeds", signalled)
    stopped = tmp_path / "stopped"
    with pytest.raises(RunStopped):
        run_job(str(manifest), str(stopped), quota_config(), actors=1)
    assert calls["reseed"] == 1
    assert output_rows(stopped).origin_uid.isna().all()  # only the planned rows ran
    monkeypatch.setattr(execute, "plan_reseeds", original)
    run_job(str(manifest), str(stopped), quota_config(), actors=1)

    assert kept_samples(stopped) == kept_samples(undisturbed)
    assert sorted(output_rows(stopped).uid) == sorted(output_rows(undisturbed).uid)


def test_append_to_a_reseeded_run_keeps_its_reseeded_rows(undisturbed, tmp_path):
    """--append compares the bigger manifest with the run's planned rows only: the quota's reseeded rows
    are not in any manifest, and stay in the plan, with the new rows after them."""
    import shutil

    from pipeline.output.run_record import shard_sizes
    from pipeline.run.plan import plan_run
    from pipeline.run.resume import prepare_output
    from pipeline.storage import open_store

    manifest, output, _ = undisturbed
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    table = pq.read_table(manifest)
    more = table.slice(0, 2).to_pydict()
    more["prompt"] = ["a new prompt", "another new prompt"]
    bigger = tmp_path / "bigger.parquet"
    pq.write_table(pa.concat_tables([table, pa.table(more, schema=table.schema)]), bigger)

    store = open_store(str(copy))
    before = pq.read_table(copy / "plan.parquet")
    plan, record = plan_run(str(bigger), quota_config())
    updated = prepare_output(store, record, restart=False, append=True, plan=plan)
    after = pq.read_table(copy / "plan.parquet")
    assert after.slice(0, before.num_rows).equals(before)  # every row as it was, the reseeded ones too
    new = after.slice(before.num_rows)
    assert sorted(new.column("prompt").to_pylist()) == sorted(more["prompt"])
    assert new.column("origin_uid").null_count == 2
    assert len(shard_sizes(updated)) == len(shard_sizes(json.loads((output / "run.json").read_text()))) + 1
