"""select_uids: top fraction / count / minimum, per style or prompt, checked by hand and against pandas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.scoring.select_plan import group_sizes, select_uids


def table(rows: list[tuple]) -> pa.Table:
    uid, score, style, prompt = zip(*rows, strict=True)
    return pa.table({"uid": uid, "clip_t": score, "style": style, "prompt": prompt})


ROWS = [
    ("u0", 0.10, "s1", "p1"),
    ("u1", 0.40, "s1", "p2"),
    ("u2", 0.30, "s1", "p1"),
    ("u3", 0.30, "s2", "p2"),  # ties with u2 (uid breaks it: u2 first)
    ("u4", 0.90, "s2", "p1"),
    ("u5", None, "s2", "p2"),  # unscored: never selected, not counted
    ("u6", 0.20, "s2", "p1"),
    ("u7", float("nan"), "s1", "p2"),
    ("u8", 0.35, "s1", "p1"),
    ("u9", 0.05, "s2", "p2"),
]


def test_top_fraction_over_everything_breaks_ties_by_uid():
    # 8 scored rows; top 0.3 -> round(2.4) = 2; top 0.5 -> 4 (u2 beats u3 on the 0.30 tie)
    assert select_uids(table(ROWS), "clip_t", top=0.3) == ["u1", "u4"]
    assert select_uids(table(ROWS), "clip_t", top=0.5) == ["u1", "u2", "u4", "u8"]
    assert select_uids(table(ROWS), "clip_t", top=1.0) == ["u0", "u1", "u2", "u3", "u4", "u6", "u8", "u9"]


def test_top_fraction_per_group():
    # s1 scored: u1 .40, u8 .35, u2 .30, u0 .10 -> 2 of 4; s2 scored: u4 .90, u3 .30, u6 .20, u9 .05 -> 2
    assert select_uids(table(ROWS), "clip_t", top=0.5, per="style") == ["u1", "u3", "u4", "u8"]
    # p1: u4 .90, u8 .35, u2 .30, u6 .20, u0 .10 -> round(1.5) = 2; p2: u1 .40, u3 .30, u9 .05 -> 1
    assert select_uids(table(ROWS), "clip_t", top=0.3, per="prompt") == ["u1", "u4", "u8"]
    assert select_uids(table(ROWS), "clip_t", top=0.4, per="prompt") == ["u1", "u4", "u8"]


def test_exact_fraction_rounding_halves_up():
    rows = [(f"u{i:02d}", i / 10, "s", "p") for i in range(10)]
    assert len(select_uids(table(rows), "clip_t", top=0.3)) == 3  # 0.3 * 10 is 3, not 3.0000000000000004
    assert len(select_uids(table(rows), "clip_t", top=0.25)) == 3  # 2.5 rounds up
    assert len(select_uids(table(rows), "clip_t", top=0.24)) == 2
    assert select_uids(table(rows[:1]), "clip_t", top=0.3) == []  # round(0.3) = 0


def test_minimum_keeps_scores_at_or_above():
    assert select_uids(table(ROWS), "clip_t", minimum=0.3) == ["u1", "u2", "u3", "u4", "u8"]
    assert select_uids(table(ROWS), "clip_t", minimum=-1) == ["u0", "u1", "u2", "u3", "u4", "u6", "u8", "u9"]


@pytest.mark.parametrize("per", [None, "style", "prompt"])
@pytest.mark.parametrize("top", [0.3, 0.5, 0.77])
def test_agrees_with_pandas_on_random_tables(per, top):
    rng = np.random.default_rng(7)
    n = 500
    frame = pd.DataFrame(
        {
            "uid": [f"{v:08x}" for v in rng.permutation(1 << 20)[:n]],
            "clip_t": rng.integers(0, 40, n) / 40,  # many ties
            "style": rng.choice(["a", "b", "c", "d"], n),
            "prompt": rng.choice([f"prompt {i}" for i in range(25)], n),
        }
    )
    frame.loc[rng.choice(n, 20, replace=False), "clip_t"] = np.nan
    scored = frame.dropna(subset=["clip_t"]).sort_values(["clip_t", "uid"], ascending=[False, True])
    keys = scored[per] if per else pd.Series(0, index=scored.index)
    rank = scored.groupby(keys).cumcount()
    size = scored.groupby(keys)["uid"].transform("size")
    expected = sorted(scored.loc[rank < np.floor(size * top + 0.5 + 1e-9), "uid"])
    got = select_uids(pa.Table.from_pandas(frame), "clip_t", top=top, per=per)
    assert got == expected and len(got) > 0


def test_count_keeps_the_n_best_of_each_group_and_all_of_a_smaller_one():
    # s1 scored: u1 .40, u8 .35, u2 .30, u0 .10; s2: u4 .90, u3 .30, u6 .20, u9 .05
    assert select_uids(table(ROWS), "clip_t", count=3, per="style") == ["u1", "u2", "u3", "u4", "u6", "u8"]
    assert select_uids(table(ROWS), "clip_t", count=3) == ["u1", "u4", "u8"]
    # u2 and u3 tie at .30 for the fourth place overall: the smaller uid wins
    assert select_uids(table(ROWS), "clip_t", count=4) == ["u1", "u2", "u4", "u8"]
    # p2 has 3 scored rows (u5, u7 are unscored): all three, and group_sizes says so
    by_prompt = select_uids(table(ROWS), "clip_t", count=4, per="prompt")
    assert by_prompt == ["u1", "u2", "u3", "u4", "u6", "u8", "u9"]
    assert group_sizes(table(ROWS), "clip_t", per="prompt") == {"p1": 5, "p2": 3}
    assert group_sizes(table(ROWS), "clip_t") == {None: 8}


@pytest.mark.parametrize("per", [None, "style", "prompt"])
@pytest.mark.parametrize("count", [1, 3, 30])
def test_count_agrees_with_pandas_nlargest_on_random_tables(per, count):
    rng = np.random.default_rng(11)
    n = 400
    frame = pd.DataFrame(
        {
            "uid": [f"{v:08x}" for v in rng.permutation(1 << 20)[:n]],
            "clip_t": rng.integers(0, 30, n) / 30,  # many ties
            "style": rng.choice(["a", "b", "c", "d", "e"], n, p=[0.4, 0.3, 0.2, 0.08, 0.02]),
            "prompt": rng.choice([f"prompt {i}" for i in range(25)], n),
        }
    )
    frame.loc[rng.choice(n, 20, replace=False), "clip_t"] = np.nan
    scored = frame.dropna(subset=["clip_t"]).sort_values("uid")  # nlargest keeps the first of a tie
    if per:
        best = scored.groupby(per, group_keys=False).apply(lambda group: group.nlargest(count, "clip_t"))
    else:
        best = scored.nlargest(count, "clip_t")
    got = select_uids(pa.Table.from_pandas(frame), "clip_t", count=count, per=per)
    assert got == sorted(best["uid"]) and len(got) > 0


def test_order_of_rows_does_not_matter():
    shuffled = [ROWS[i] for i in (5, 2, 9, 0, 7, 3, 1, 8, 4, 6)]
    for kwargs in ({"top": 0.5}, {"top": 0.5, "per": "style"}, {"minimum": 0.2}):
        assert select_uids(table(shuffled), "clip_t", **kwargs) == select_uids(
            table(ROWS), "clip_t", **kwargs
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of top"),
        ({"top": 0.3, "minimum": 0.2}, "give exactly one of top"),
        ({"top": 0.3, "count": 2}, "give exactly one of top"),
        ({"count": 0}, "count must be a whole number of at least 1, got 0"),
        ({"count": 2.5}, "count must be a whole number of at least 1, got 2.5"),
        ({"top": 0}, r"top must be a fraction in \(0, 1\], got 0"),
        ({"top": 1.5}, r"top must be a fraction in \(0, 1\], got 1.5"),
        ({"top": math.nan}, "top must be a fraction"),
        ({"top": 0.3, "per": "seed"}, r"no column 'seed' \(columns: uid, clip_t, style, prompt\)"),
        ({"minimum": 0.3, "per": "style"}, "per only applies to top and count"),
        ({"top": 0.3, "by": "dino_style"}, "the table has no column 'dino_style'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    by = kwargs.pop("by", "clip_t")
    with pytest.raises(ValueError, match=message):
        select_uids(table(ROWS), by, **kwargs)
