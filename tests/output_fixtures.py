"""A small *finished* output for the select and report tests, built by the real pipeline minus Ray.

`build_output(folder, uri)` writes a manifest with real style/content images, plans it, writes
plan.parquet and run.json the way the driver does, then runs every shard through the real ShardWorker
(FakeGenerator images, the real FilterRules, the real shard writers and store.commit_shard). Only the
scorer is replaced: `KnownScorer` gives each row scores that are a fixed function of its prompt and
style image, so the statuses are known in advance:
- prompts repeat across styles (rows i, i+8, i+16 of each block of 24 share one), so --per prompt
  has groups;
- clip_t repeats across rows (ties, to exercise the uid tie-break), dino_style varies with the style,
  clip_content is set only for composition rows (None otherwise);
- rows whose prompt contains FAIL_MARK make the generator raise (failed, with the error);
- one row points at a style file that does not exist (failed input);
- the filter rules of run.json reject some rows by clip_t and some by dino_style.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from run_fixtures import PROMPTS, build_manifest, fake_config

from pipeline.storage import Store, open_store

FAIL_MARK = "#7"  # prompts "... #7" (and "#70".."#79", ...) make the fake generator raise
MISSING_STYLE_ROW = 10  # this manifest row's style file does not exist
FILTERS = ("clip_t >= 0.3", "0.05 <= dino_style < 0.9")
SCORE_NAMES = ("clip_t", "clip_content", "dino_style")


def prompt_number(prompt: str) -> int:
    """The row number build_manifest puts at the end of every prompt ("a horse #12" -> 12)."""
    return int(prompt.rsplit("#", 1)[1])


def style_key(style: Image.Image) -> int:
    """A small number that differs between the fixture's style images (their mean colour)."""
    return int(np.asarray(style.convert("RGB").resize((1, 1), Image.BOX)).sum()) % 29


def known_scores(prompt: str, style: Image.Image, composition: bool) -> dict[str, float | None]:
    number = prompt_number(prompt)
    return {
        "clip_t": (number * 7 % 10) / 10,  # 0.0 .. 0.9, every value shared by several rows
        "clip_content": 0.5 + number % 50 / 100 if composition else None,
        "dino_style": ((number * 13 + style_key(style) * 5) % 29) / 28,
    }


class KnownScorer:
    """The Scorer interface (`names`, `embedding_names`, `score_with_embeddings(images, prompts, styles,
    contents)`) with known values and no embeddings."""

    names = SCORE_NAMES
    embedding_names: tuple[str, ...] = ()

    def score(self, images, prompts, styles, contents) -> dict[str, list[float | None]]:
        rows = [
            known_scores(*row[:2], row[2] is not None) for row in zip(prompts, styles, contents, strict=True)
        ]
        return {name: [row[name] for row in rows] for name in self.names}

    def score_with_embeddings(self, images, prompts, styles, contents):
        return self.score(images, prompts, styles, contents), {}


@dataclass(frozen=True)
class FinishedOutput:
    uri: str
    store: Store
    manifest: Path
    planned_shards: int
    committed: tuple[int, ...]  # shard ids committed
    run_record: dict[str, Any]


def build_output(
    folder: Path,
    uri: str | None = None,
    *,
    rows: int = 24,
    styles: int = 3,
    shard_size: int = 5,
    keep_rejected: bool = True,
    commit_shards: list[int] | None = None,
    image_size: int = 32,
    scorer=None,
    config_overrides: dict[str, Any] | None = None,
) -> FinishedOutput:
    """Build a finished output at `uri` (default: folder/"output"); inputs go under folder/"inputs".
    `commit_shards` limits which shards get committed (a partial output); `config_overrides` (dotted
    keys, e.g. {"image.format": "jpg"}) go into the run config."""
    from pipeline.models.fake_generator import FakeGenerator
    from pipeline.run.plan import plan_run, write_plan
    from pipeline.scoring.rules import FilterRules
    from pipeline.storage.layout import RUN_KEY
    from pipeline.worker.shard_worker import ShardWorker

    manifest = build_manifest(folder / "inputs", rows, styles=styles, composition_every=4)
    table = pq.read_table(manifest)
    numbers = [i // 24 * 8 + i % 8 for i in range(rows)]  # each prompt on 3 rows of different styles
    prompts = [f"{PROMPTS[n % len(PROMPTS)]} #{n}" for n in numbers]
    styles_column = table.column("style").to_pylist()
    styles_column[MISSING_STYLE_ROW] = str(folder / "inputs" / "styles" / "missing.png")
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts))
    table = table.set_column(table.schema.get_field_index("style"), "style", pa.array(styles_column))
    pq.write_table(table, manifest)

    config = fake_config(
        shard_size=shard_size,
        keep_rejected=keep_rejected,
        **{
            "generator.fake.size": image_size,
            "generator.fake.fail_prompts": [FAIL_MARK],
            "scoring.enabled": True,
            "scoring.filters": list(FILTERS),
            **(config_overrides or {}),
        },
    )
    plan, record = plan_run(str(manifest), config)
    store = open_store(uri or str(folder / "output"))
    write_plan(store, plan)
    store.put_bytes(RUN_KEY, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())

    scorer = scorer or KnownScorer()
    rules = FilterRules.parse(list(config.scoring.filters), set(scorer.names))
    worker = ShardWorker(
        FakeGenerator(config.generator.fake), scorer, rules, store, config, model_info={"generator": "fake"}
    )
    shard_ids = list(range(plan.num_shards)) if commit_shards is None else commit_shards
    try:
        for shard_id in shard_ids:
            worker.run_shard(shard_id, f"fixture-{shard_id}")
    finally:
        worker.close()
    return FinishedOutput(store.uri, store, manifest, plan.num_shards, tuple(shard_ids), record)


def read_shard_tables(store: Store) -> pa.Table:
    """Every committed shard parquet of an output, concatenated (an independent reader for tests)."""
    import io

    tables = []
    for info in store.list("metadata/"):
        if info.key.endswith(".parquet"):
            tables.append(pq.read_table(io.BytesIO(store.get_bytes(info.key))))
    return pa.concat_tables(tables, promote_options="permissive")


def kept_rows(store: Store) -> pa.Table:
    table = read_shard_tables(store)
    return table.filter(pc.equal(table.column("status"), "kept"))
