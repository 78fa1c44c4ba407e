"""The output's Hugging Face dataset card (`README.md` at its root), so `datasets.load_dataset(output)`
loads images, captions and metadata with declared types.

One config, `default`: the kept samples, read from `shards/*.tar` by the `webdataset` builder, with
explicit features: `__key__`, `__url__`, the image (`png`/`jpg`/`webp`, the run's format), `txt` (the
caption) and `json` (the sample metadata). Declaring the json's type keeps it stable: without it the
builder infers it from the first 5 samples, and a field null there (content in stylization rows) breaks
later. (Every config of a card is read by one builder, so the shard parquets, every planned row with its
status, are read with the `parquet` builder by path: the card says how.)

The json's type comes from the output itself, not from a list kept here: the run's shard parquet schema
gives the scores (`score_*` columns), the plan's schema gives the per-row settings it has (width,
height, steps, ...) and the extras' types (the json carries them
natively, the parquet flattens nested ones to strings), and the generator's parameters are typed from
committed samples' `params` (stylization and composition rows both, when the run has both).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from manifests.row_settings import INTEGER_COLUMNS, present_columns
from pipeline.captions import extra_columns
from pipeline.output.run_record import load_run_record, require_stylegen_output
from pipeline.storage.layout import (
    CARD_KEY,
    METADATA_PREFIX,
    PLAN_KEY,
    RUN_KEY,
    SHARDS_PREFIX,
    table_key_of,
    uses_legacy_layout,
)
from pipeline.storage.objects import ObjectNotFound

SCORE_PREFIX = "score_"
# The sample json's own fields and their types (written by
# pipeline.worker.shard_files.ShardFiles.sample_metadata).
_STRING, _INT, _FLOAT = pa.string(), pa.int64(), pa.float64()
SAMPLE_FIELDS = {
    "uid": _STRING,
    "shard_id": _INT,
    "row": _INT,
    "id": _STRING,
    "prompt": _STRING,
    "style": _STRING,
    "content": _STRING,
    "seed": _INT,
    "manifest_seed": _INT,
    "preset": _STRING,
    "model": _STRING,
    "status": _STRING,
    "filter": pa.struct([("rule", _STRING), ("value", _FLOAT)]),
}
OPTIONAL_FIELDS = {"source_shard_id": _INT}  # present when the shard parquets have the column (select)
PARAMS_SAMPLE_ROWS = 64  # per mode: enough to see every key the generator writes
_ARROW_TO_HF = {"double": "float64", "float": "float32", "halffloat": "float16"}


def sample_json_type(
    table_schema: pa.Schema, plan_schema: pa.Schema | None, params: pa.DataType
) -> pa.StructType:
    """The arrow type of a sample's `.json` member, from the run's shard parquet and plan schemas."""
    fields = [pa.field(name, kind) for name, kind in SAMPLE_FIELDS.items()]
    fields += [pa.field(name, kind) for name, kind in OPTIONAL_FIELDS.items() if name in table_schema.names]
    settings = present_columns(plan_schema.names if plan_schema is not None else [])  # width, height, ...
    fields += [pa.field(name, _INT if name in INTEGER_COLUMNS else _FLOAT) for name in settings]
    extras = [f for f in (plan_schema or []) if f.name in extra_columns([f.name])]
    fields.append(pa.field("extra", pa.struct(extras)))
    fields.append(pa.field("params", params))
    scores = [
        pa.field(name.removeprefix(SCORE_PREFIX), _FLOAT)
        for name in table_schema.names
        if name.startswith(SCORE_PREFIX)
    ]
    fields.append(pa.field("scores", pa.struct(scores)))
    return pa.struct(sorted(fields, key=lambda field: field.name))


def feature_yaml(kind: pa.DataType) -> dict[str, Any]:
    """One Hugging Face feature, as the card's YAML writes it (datasets' Features._to_yaml_list form)."""
    if pa.types.is_struct(kind):
        return {"struct": [{"name": field.name, **feature_yaml(field.type)} for field in kind]}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        key = "large_list" if pa.types.is_large_list(kind) else "list"
        inner = feature_yaml(kind.value_type)
        if list(inner) == ["dtype"]:
            return {key: inner["dtype"]}
        if list(inner) == ["struct"]:
            return {key: inner["struct"]}
        return {key: inner}
    return {"dtype": _ARROW_TO_HF.get(str(kind), str(kind))}


def card_features(image_ext: str, json_type: pa.StructType) -> list[dict[str, Any]]:
    return [
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
        {"name": image_ext, "dtype": "image"},
        {"name": "json", **feature_yaml(json_type)},
        {"name": "txt", "dtype": "string"},
    ]


def card_text(
    run: dict[str, Any], features: list[dict[str, Any]], legacy: bool, counts: dict[str, int]
) -> str:
    metadata_glob = f"{SHARDS_PREFIX if legacy else METADATA_PREFIX}*.parquet"
    header = {
        "configs": [
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": "train", "path": f"{SHARDS_PREFIX}*.tar"}],
            },
        ],
        "dataset_info": [{"config_name": "default", "features": features}],
        "tags": ["stylegen", "synthetic", "webdataset"],
        "task_categories": ["text-to-image"],
    }
    config = run.get("config") or {}
    image = next(feature["name"] for feature in features if feature.get("dtype") == "image")
    body = f"""# stylegen dataset

Synthetic style-personalized images made by stylegen (preset
`{config.get("preset", "?")}`): {counts.get("kept", 0):,} kept samples in {counts.get("shards", 0):,}
WebDataset shards (`{SHARDS_PREFIX}shard-NNNNNN.tar`: `{{uid}}.{image}`, `{{uid}}.txt` caption,
`{{uid}}.json` metadata), and one row per planned sample, whatever became of it, in
`{metadata_glob}` ({counts.get("rejected", 0):,} rejected, {counts.get("failed", 0):,} failed).
`run.json` describes the run once: config, models (`models`, keyed by the `model` fingerprint each
sample carries), package versions.

```python
import datasets

samples = datasets.load_dataset("path/to/output", split="train")  # {image}, txt, json
rows = datasets.load_dataset("parquet", data_files="path/to/output/{metadata_glob}", split="train")
```

`{metadata_glob}` is one table for any Parquet reader (pandas, duckdb, polars, ray.data).
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def plan_modes(plan: pq.ParquetFile | None) -> set[bool]:
    """Which modes the plan has (False: stylization, True: composition), from the `content` column's
    null counts in the footer (no data read)."""
    if plan is None or "content" not in plan.schema_arrow.names:
        return {False, True}
    column = plan.schema_arrow.get_field_index("content")
    rows = nulls = 0
    for index in range(plan.metadata.num_row_groups):
        group = plan.metadata.row_group(index)
        stats = group.column(column).statistics
        if stats is None or not stats.has_null_count:
            return {False, True}
        rows, nulls = rows + group.num_rows, nulls + stats.null_count
    return {mode for mode, present in ((False, nulls > 0), (True, nulls < rows)) if present}


def params_type(store, markers: dict, modes: set[bool]) -> pa.DataType:
    """The type of the samples' `params`, inferred from committed kept rows of each mode the plan has
    (stylization, composition), reading shard parquets in order until every such mode has been seen."""
    import pyarrow.compute as pc

    seen: dict[bool, list[dict]] = {False: [], True: []}
    for shard_id, marker in sorted(markers.items()):
        key = table_key_of(shard_id, marker.files)
        with store.open(key) as handle:
            parquet = pq.ParquetFile(handle)
            if "params" not in parquet.schema_arrow.names:
                continue
            rows = parquet.read(columns=["status", "content", "params"])
        rows = rows.filter(pc.equal(rows.column("status"), "kept"))
        for content, params in zip(
            rows.column("content").to_pylist(), rows.column("params").to_pylist(), strict=True
        ):
            bucket = seen[content is not None]
            if params is not None and len(bucket) < PARAMS_SAMPLE_ROWS:
                bucket.append(json.loads(params))
        if all(len(seen[mode]) >= PARAMS_SAMPLE_ROWS for mode in modes):
            break
    samples = seen[False] + seen[True]
    return pa.array(samples).type if samples else pa.struct([])


def build_card(store) -> str:
    """The card's text for the output in `store` (from run.json, the markers, one shard parquet's schema,
    plan.parquet's schema and committed samples' params)."""
    run = load_run_record(store)
    if run is None:
        raise ObjectNotFound(store.url(RUN_KEY))
    require_stylegen_output(store, run)  # the card replaces README.md: only in an output of ours
    markers = store.committed_shards()
    legacy = uses_legacy_layout(run)
    table_schema = pa.schema([])
    if markers:
        shard_id, marker = max(markers.items())  # every shard of a run has the same columns
        with store.open(table_key_of(shard_id, marker.files)) as handle:
            table_schema = pq.read_schema(handle)
    plan_schema, modes = None, {False, True}
    if store.exists(PLAN_KEY):
        with store.open(PLAN_KEY) as handle:
            plan = pq.ParquetFile(handle)
            plan_schema, modes = plan.schema_arrow, plan_modes(plan)
    json_type = sample_json_type(table_schema, plan_schema, params_type(store, markers, modes))
    image_ext = ((run.get("config") or {}).get("image") or {}).get("format", "png")
    counts = {"shards": len(markers)}
    for status in ("kept", "rejected", "failed"):
        counts[status] = sum(int(marker.summary.get(status, 0)) for marker in markers.values())
    return card_text(run, card_features(image_ext, json_type), legacy, counts)


def write_dataset_card(store) -> str:
    """Write README.md at the output's root; returns its URL."""
    store.put_bytes(CARD_KEY, build_card(store).encode("utf-8"))
    return store.url(CARD_KEY)
