"""Near-duplicate grouping and `stylegen dedup`, checked against an independent brute force: the full
float64 cosine matrix of the stored float16 embeddings and a breadth-first search over "cosine >= T"."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from output_fixtures import KnownScorer, build_output, prompt_number, style_key
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.dataset.dedup import Dedup, dedup_output
from pipeline.dataset.subset import SelectError
from pipeline.scoring.duplicates import MARGIN, duplicate_groups

# --- the independent computation --------------------------------------------------------------------


def brute_force_groups(vectors: np.ndarray, threshold: float, partition=None) -> np.ndarray:
    """Label = smallest index of the connected component; rows without a direction are alone."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    unit = np.where(usable[:, None], v / np.where(usable, norms, 1)[:, None], 0)
    linked = (unit @ unit.T >= threshold) & usable[:, None] & usable[None, :]
    if partition is not None:
        partition = np.asarray(partition)
        linked &= partition[:, None] == partition[None, :]
    labels = np.full(len(v), -1)
    for start in range(len(v)):
        if labels[start] >= 0:
            continue
        labels[start] = start
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in np.flatnonzero(linked[node]):
                if labels[other] < 0:
                    labels[other] = start
                    queue.append(other)
    return labels


def hidden_set(seed: int, count: int = 240, dims: int = 24) -> np.ndarray:
    """Clusters of noisy copies at several noise levels (some pairs straddle the threshold), chains whose
    ends are not similar but are linked through the middle, exact copies, zero rows; float16."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < count - 12:
        base = rng.normal(size=dims)
        for _ in range(rng.integers(1, 6)):
            rows.append(
                base
                + rng.choice([0.0, 0.05, 0.2, 0.3, 1.0])
                * rng.normal(size=dims)
                * np.linalg.norm(base)
                / np.sqrt(dims)
            )
        start, step = rng.normal(size=dims), rng.normal(size=dims)
        rows += [
            start + k * 0.35 * step * np.linalg.norm(start) / np.linalg.norm(step) for k in range(4)
        ]  # a chain
    rows += [np.zeros(dims)] * 2 + [rows[3]] * 3
    vectors = np.array(rows[:count], dtype=np.float16)
    return vectors[rng.permutation(len(vectors))]


# --- the grouping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threshold", [0.9, 0.97])
def test_groups_equal_the_brute_force_whatever_the_block_size(seed, threshold):
    vectors = hidden_set(seed)
    expected = brute_force_groups(vectors, threshold)
    unit = (
        vectors.astype(np.float64)
        / np.maximum(np.linalg.norm(vectors.astype(np.float64), axis=1), 1e-300)[:, None]
    )
    cosines = unit @ unit.T
    same = expected[:, None] == expected[None, :]
    assert (same & (cosines < threshold)).any(), "the set must have pairs grouped only through others"
    assert ((cosines >= threshold - MARGIN["float32"]) & (cosines < threshold)).any(), "near-threshold pairs"
    assert len(set(expected)) < len(vectors) - 20
    for block in (7, 64, 4096):
        assert np.array_equal(duplicate_groups(vectors, threshold, block=block, device="cpu"), expected), (
            block
        )


def test_groups_within_a_partition_and_the_memory_map(tmp_path):
    vectors = hidden_set(2)
    partition = np.random.default_rng(3).integers(0, 4, len(vectors))
    expected = brute_force_groups(vectors, 0.9, partition)
    assert not np.array_equal(expected, brute_force_groups(vectors, 0.9))
    mapped = np.lib.format.open_memmap(tmp_path / "v.npy", "w+", np.float16, vectors.shape)
    mapped[:] = vectors
    assert np.array_equal(
        duplicate_groups(mapped, 0.9, partition=partition, block=16, device="cpu"), expected
    )
    with pytest.raises(ValueError, match="in \\[-1, 1\\], got 1.5"):
        duplicate_groups(vectors, 1.5)


# --- stylegen dedup on a finished output ---------------------------------------------------------------

DIMS = 16


def known_embedding(prompt: str, style) -> np.ndarray:
    """Prompt numbers 2k and 2k+1 share a direction; the style adds a little noise."""
    number = prompt_number(prompt)
    base = np.random.default_rng(number // 2).normal(size=DIMS)
    noise = np.random.default_rng(1000 + number * 31 + style_key(style)).normal(size=DIMS)
    vector = base + 0.25 * noise
    return (vector / np.linalg.norm(vector)).astype(np.float16)


class KnownEmbeddingScorer(KnownScorer):
    embedding_names = ("dino",)

    def score_with_embeddings(self, images, prompts, styles, contents):
        vectors = np.stack([known_embedding(p, s) for p, s in zip(prompts, styles, strict=True)])
        return self.score(images, prompts, styles, contents), {"dino": vectors}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("dedup-source"), rows=48, scorer=KnownEmbeddingScorer())


def kept_frame(output: str) -> pd.DataFrame:
    frames = [pd.read_parquet(path) for path in sorted(Path(output).rglob("shard-*.parquet"))]
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["status"] == "kept"].reset_index(drop=True)


def expected_uids(frame: pd.DataFrame, threshold: float, within=None, prefer=None) -> set[str]:
    vectors = np.stack(frame["embedding_dino"].to_numpy()).astype(np.float16)
    partition = pd.factorize(frame[within])[0] if within else None
    frame = frame.assign(group=brute_force_groups(vectors, threshold, partition))
    frame = frame.assign(rank=-frame[f"score_{prefer}"].fillna(-np.inf) if prefer else 0.0)
    return set(frame.sort_values(["group", "rank", "uid"]).groupby("group").head(1)["uid"])


CASES = [
    {"threshold": 0.9},
    {"threshold": 0.8, "within": "style"},
    {"threshold": 0.8, "within": "prompt", "prefer": "clip_t"},
    {"threshold": 0.85, "prefer": "dino_style"},
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()))
def test_dedup_keeps_one_sample_per_group(source, tmp_path, case):
    frame = kept_frame(source.uri)
    expected = expected_uids(frame, **case)
    assert len(expected) < len(frame)  # there are duplicates to remove
    summary = dedup_output(source.uri, str(tmp_path / "new"), Dedup("dino", **case), shard_size=4, block=5)
    new = kept_frame(str(tmp_path / "new"))
    assert sorted(new["uid"]) == sorted(expected)
    assert summary.selected == len(expected) and summary.removed == len(frame) - len(expected)
    originals = frame.set_index("uid")
    for row in new.itertuples():  # the embedding travels with its sample, bit for bit
        assert np.array_equal(row.embedding_dino, originals.loc[row.uid, "embedding_dino"])
    record = json.loads((tmp_path / "new" / "run.json").read_text())
    assert record["selection"] == {
        "dedup": {
            "by": "dino",
            "threshold": case["threshold"],
            "within": case.get("within"),
            "prefer": case.get("prefer"),
        }
    }


def test_dedup_resumes_and_refuses_what_it_cannot_do(source, tmp_path):
    target = str(tmp_path / "new")
    first = dedup_output(source.uri, target, Dedup("dino", 0.9), shard_size=4)
    again = dedup_output(source.uri, target, Dedup("dino", 0.9), shard_size=4)
    assert again.shards_written == 0 and again.shards_resumed == first.shards
    with pytest.raises(SelectError, match="holds a different selection"):
        dedup_output(source.uri, target, Dedup("dino", 0.8), shard_size=4)
    with pytest.raises(SelectError, match=r"no column 'embedding_clip'; embeddings there: dino"):
        dedup_output(source.uri, str(tmp_path / "other"), Dedup("clip", 0.9))
    with pytest.raises(SelectError, match="in \\[-1, 1\\]"):
        Dedup("dino", 2.0)

    result = CliRunner().invoke(
        app, ["dedup", source.uri, "--by", "dino", "--threshold", "0.9", "-o", str(tmp_path / "cli")]
    )
    assert result.exit_code == 0, result.output
    assert sorted(kept_frame(str(tmp_path / "cli"))["uid"]) == sorted(
        expected_uids(kept_frame(source.uri), 0.9)
    )
    result = CliRunner().invoke(
        app, ["dedup", source.uri, "--by", "nothing", "--threshold", "0.9", "-o", str(tmp_path / "bad")]
    )
    assert result.exit_code == 2 and "no column 'embedding_nothing'" in result.output


def test_dedup_takes_the_new_outputs_lease(source, tmp_path):
    from pipeline.run.lease import OutputLease
    from pipeline.storage import open_store
    from pipeline.storage.layout import LEASE_KEY

    target = tmp_path / "new"
    command = ["dedup", source.uri, "--threshold", "0.9", "-o", str(target)]
    with OutputLease(open_store(str(target)), ttl_s=60) as holder:
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert f"being written by another driver (pid {holder.holder['pid']}" in result.output
        assert [path.name for path in target.rglob("*")] == [LEASE_KEY]  # nothing else was written
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert not (target / LEASE_KEY).exists()


def test_an_output_without_embeddings_is_refused_naming_the_scorer(tmp_path):
    built = build_output(tmp_path, rows=12)  # KnownScorer: the embedding column is there, all null
    with pytest.raises(
        SelectError, match="no kept sample has an embedding_dino value; was the dino_embedding"
    ):
        dedup_output(built.uri, str(tmp_path / "new"), Dedup("dino", 0.9))
