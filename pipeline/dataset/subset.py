"""The writer of derived datasets (`stylegen select`, `stylegen dedup`): fresh shards made of chosen
kept samples of a finished run, with their own run.json and plan.parquet.

1. `open_source`: the source and new output, after the checks every derived dataset needs (distinct
   locations, a stylegen source, finished unless --allow-partial).
2. `write_subset`: lay the chosen samples out in source order (source shard, then uid), `shard_size`
   per new shard, so each new shard reads one or two source tars.
3. Write the new output's run.json (source output and fingerprint, what chose the samples, counts) and
   plan.parquet (the source plan rows of the chosen uids, with their new shard ids).
4. For every new shard not yet committed: stream its members out of the source tars (image bytes
   untouched; the json gets its new shard_id and `source_shard_id`), and commit the tar and the shard
   parquet (pipeline.shards.commit).

Writing the same subset again resumes it (only missing shards are written); anything else into a
non-empty new output is refused, naming what differs, reading only, before anything is written (not even
the lease). The source fingerprint covers the sha256 of every committed file, so a source that changed
since is refused too. The caller's `lease` (the CLI's: pipeline.run.lease.OutputLease) makes this command
the new output's one writer, as `stylegen run` is its output's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.columns import EMBEDDING_PREFIX, SCORE_PREFIX, TIME_PREFIX
from pipeline.errors import UserError
from pipeline.json_format import canonical_json, flatten
from pipeline.output.accounting import planned_counts
from pipeline.output.run_record import RunRecordError, load_run_record, store_run_record
from pipeline.output.shard_tables import read_shard_tables
from pipeline.output.shard_tars import read_tar_samples
from pipeline.storage.commit import CommitResult, sweep_attempts
from pipeline.storage.layout import LEASE_KEY, PLAN_KEY, RUN_KEY
from pipeline.storage.ledger import CommitView

SELECT_FORMAT = "stylegen-select/2"  # /1: the same, shard parquets under shards/
DEFAULT_SHARD_SIZE = 64
_CORE_COLUMNS = ("uid", "shard_id", "status", "reason")


class SelectError(UserError, ValueError):
    """A selection (or dedup) cannot run; the message says what and where."""

    exit_code = 2


@dataclass
class SelectSummary:
    source: str
    output: str
    source_kept: int  # kept samples in the committed source shards
    selected: int
    shards: int
    shards_resumed: int  # committed by an earlier run of the same selection
    shards_written: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the source and the new output ------------------------------------------------------------------


def open_source(source: str, output: str, allow_partial: bool, storage: dict[str, Any] | None = None):
    """(source store, output store, source run.json, source markers) for a derived dataset, after the
    checks every derived dataset needs: distinct locations, a stylegen source, finished unless allowed.
    `storage`: open_store options (endpoint, addressing) for whichever of the two is on S3."""
    from pipeline.storage import open_store

    def opened(uri: str):
        return open_store(uri, **(storage or {})) if str(uri).startswith("s3://") else open_store(uri)

    source_store, output_store = opened(source), opened(output)
    _refuse_overlap(source_store.uri, output_store.uri)
    try:
        source_run = load_run_record(source_store)
    except RunRecordError as error:
        raise SelectError(str(error)) from None
    if source_run is None:
        raise SelectError(
            f"{source_store.url(RUN_KEY)}: not found; the source has no run.json: is it a stylegen output?"
        )
    markers = source_store.committed_shards()
    _refuse_unfinished(source_store, markers, allow_partial)
    return source_store, output_store, source_run, markers


def write_subset(
    source_store,
    output_store,
    source_run: dict[str, Any],
    markers: dict,
    rows,
    schema,
    chosen: list[str],
    selection: dict[str, Any],
    *,
    shard_size: int | None = None,
    workers: int = 4,
    lease: Callable[[Any], AbstractContextManager] | None = None,
) -> SelectSummary:
    """Write the `chosen` uids of the source's kept `rows` (uid, shard_id) to fresh shards of the output,
    recording `selection` (what chose them) in its run.json; resumes an identical earlier write.
    `lease(output_store)`: held while writing (its `lost` event set: another writer took over)."""
    from pipeline.dataset.card import write_dataset_card

    shard_size = shard_size or _source_shard_size(source_run)
    if shard_size < 1:
        raise SelectError(f"--shard-size must be at least 1, got {shard_size}")
    selected = in_source_order(rows, chosen)
    shards = -(-selected.num_rows // shard_size)

    record = selection_record(
        source_store, source_run, markers, selection, shard_size, rows.num_rows, selected
    )
    _start_or_resume(output_store, record, write=False)  # reads only: a refused output gets no lease
    with lease(output_store) if lease else nullcontext() as held:
        legacy = _start_or_resume(output_store, record)  # again: another writer may have started since
        if not output_store.exists(PLAN_KEY):
            write_selection_plan(source_store, output_store, selected, record)

        commits = CommitView(output_store)
        done = dict(commits.markers)
        todo = [shard_id for shard_id in range(shards) if shard_id not in done]

        def write_one(shard_id: int):
            if held is not None and held.lost.is_set():
                raise SelectError(
                    f"{output_store.uri}: another writer took over this output's lease, so this one stopped; "
                    "rerun the same command once it is done to finish the missing shards"
                )
            members = selected.slice(shard_id * shard_size, shard_size)
            return write_selected_shard(
                source_store, output_store, shard_id, members, schema, markers, legacy
            )

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for result in pool.map(write_one, todo):  # re-raises the first shard's error
                commits.add(result.ledger_entry)
        commits.flush()
        sweep_attempts(output_store, commits.markers, older_than=timedelta(hours=1))
        write_dataset_card(output_store)  # the new dataset loads like a run's
    return SelectSummary(
        source=source_store.uri,
        output=output_store.uri,
        source_kept=rows.num_rows,
        selected=selected.num_rows,
        shards=shards,
        shards_resumed=len(done),
        shards_written=len(todo),
    )


def _refuse_overlap(source: str, output: str) -> None:
    # Folders compare by their real paths: a link to the source is the source.
    a, b = (uri if "://" in uri else os.path.realpath(uri) for uri in (source, output))
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    if a == b:
        raise SelectError(f"the new output must differ from the source output ({source})")
    if a.startswith(b) or b.startswith(a):
        raise SelectError(f"the new output {output} and the source {source} must not contain one another")


def _refuse_unfinished(store, markers: dict, allow_partial: bool) -> None:
    planned, _ = planned_counts(store)
    if planned is None:
        raise SelectError(f"{store.uri}: cannot tell how many shards were planned (run.json has no plan)")
    missing = sorted(set(range(planned)) - set(markers))
    if missing and not allow_partial:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise SelectError(
            f"{store.uri} is unfinished: {planned - len(missing)} of {planned} shards committed "
            f"(missing: {shown}); finish the run (rerun `stylegen run`) or pass --allow-partial"
        )


def _source_shard_size(run: dict[str, Any]) -> int:
    size = (run.get("plan") or {}).get("shard_size") or (run.get("config") or {}).get("shard_size")
    return int(size or DEFAULT_SHARD_SIZE)


# --- the new output's layout and records -------------------------------------------------------------


def in_source_order(rows, chosen: list[str]):
    """The chosen rows sorted by (source shard, uid): new shard k is rows [k * size, (k + 1) * size)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    picked = rows.filter(pc.is_in(rows.column("uid"), value_set=pa.array(chosen, pa.string())))
    return picked.select(["shard_id", "uid"]).sort_by([("shard_id", "ascending"), ("uid", "ascending")])


def source_fingerprint(run: dict[str, Any], markers: dict) -> str:
    """sha256 over the source's plan and config fingerprints and every committed file's sha256."""
    content = {
        "plan": (run.get("plan") or {}).get("fingerprint"),
        "config": run.get("config_fingerprint"),
        "shards": {
            str(shard_id): {key: entry.sha256 for key, entry in sorted(marker.files.items())}
            for shard_id, marker in sorted(markers.items())
        },
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def selection_record(source_store, source_run, markers, selection, shard_size, source_kept, selected):
    """The new output's run.json. `plan.shards` and `manifest.rows` let `stylegen status` read it; the
    manifest fingerprint is the selection's own, so `stylegen run` never mistakes it for its run."""
    from pipeline.versions import package_versions

    source = {
        "output": source_store.uri,
        "fingerprint": source_fingerprint(source_run, markers),
        "config_fingerprint": source_run.get("config_fingerprint"),
        "plan_fingerprint": (source_run.get("plan") or {}).get("fingerprint"),
        "shards_committed": len(markers),
        "shards_planned": planned_counts(source_store)[0],
    }
    identity = {"source": source, "selection": selection, "shard_size": shard_size}
    fingerprint = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    count, shards = selected.num_rows, -(-selected.num_rows // shard_size)
    return {
        "format": SELECT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **identity,
        "counts": {"source_kept": source_kept, "selected": count, "shards": shards},
        "fingerprint": fingerprint,
        "manifest": {"uri": source_store.url(PLAN_KEY), "rows": count, "fingerprint": fingerprint},
        "plan": {"fingerprint": fingerprint, "shards": shards, "shard_size": shard_size},
        # The samples were generated under the source's config: the report reads its filters here.
        "config": source_run.get("config"),
        "config_fingerprint": source_run.get("config_fingerprint"),
        "models": source_run.get("models") or {},  # what each sample's `model` fingerprint names
        "versions": package_versions(),
    }


def _start_or_resume(store, record: dict[str, Any], *, write: bool = True) -> bool:
    """Write run.json into an empty output (but for the lease; not when `write` is False); accept an
    output holding this very selection; refuse the rest. Returns whether the output is of format 1
    (its shard parquets go under shards/)."""
    from pipeline.storage.layout import uses_legacy_layout

    objects = [info for info in store.list("") if info.key != LEASE_KEY]
    if not objects:
        if write:
            store_run_record(store, record)
        return False
    try:
        prior = load_run_record(store)
    except RunRecordError:
        prior = None
    if not isinstance(prior, dict) or prior.get("format") not in (SELECT_FORMAT, "stylegen-select/1"):
        raise SelectError(
            f"{store.uri} already holds {len(objects)} objects and is not a selection output; "
            "choose an empty or new location for -o"
        )
    identity = ("source", "selection", "shard_size")
    before = flatten({name: prior.get(name) for name in identity})
    after = flatten({name: record[name] for name in identity})
    differences = [
        f"{key}: {canonical_json(before.get(key))} -> {canonical_json(after.get(key))}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]
    if differences:
        raise SelectError(
            f"{store.uri} holds a different selection ({'; '.join(differences)}); "
            "choose another -o, or delete it to start over"
        )
    return uses_legacy_layout(prior)


def write_selection_plan(source_store, output_store, selected, record: dict[str, Any]) -> None:
    """plan.parquet of the new output: the source plan rows of the selected uids, new shard ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with source_store.open(PLAN_KEY) as handle:
        plan = pq.read_table(handle)
    position = {uid: index for index, uid in enumerate(plan.column("uid").to_pylist())}
    order = []
    for uid in selected.column("uid").to_pylist():
        if uid not in position:
            raise SelectError(f"{source_store.url(PLAN_KEY)} has no row for selected uid {uid}")
        order.append(position[uid])
    rows = plan.take(pa.array(order, pa.int64()))
    field = (
        plan.schema.field("shard_id") if "shard_id" in plan.column_names else pa.field("shard_id", pa.int32())
    )
    ids = pa.array([index // record["shard_size"] for index in range(len(order))], field.type)
    if "shard_id" in rows.column_names:
        rows = rows.set_column(rows.column_names.index("shard_id"), field, ids)
    else:
        rows = rows.add_column(0, field, ids)
    info = {
        "num_shards": record["plan"]["shards"],
        "num_rows": record["counts"]["selected"],
        "shard_size": record["shard_size"],
        "fingerprint": record["fingerprint"],
        "selected_from": record["source"]["output"],
    }
    from manifests.plan import METADATA_KEY  # the plan's own metadata key, so read_plan_info works

    rows = rows.replace_schema_metadata({METADATA_KEY: json.dumps(info, sort_keys=True)})
    with tempfile.TemporaryDirectory(prefix="stylegen-select-") as folder:
        path = Path(folder) / PLAN_KEY
        pq.write_table(rows, path, compression="zstd")
        output_store.put_file(PLAN_KEY, path)


# --- one new shard ----------------------------------------------------------------------------------


def write_selected_shard(
    source_store, output_store, shard_id: int, members, schema, markers, legacy: bool = False
) -> CommitResult:
    """Copy one new shard's samples (`members`: shard_id, uid of the source) out of the source tars
    and commit them with their parquet rows (from the source parquets, all columns). `markers`: the
    source's commit markers (they name each source shard's files); `legacy`: the output is of format 1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.shards.commit import ShardContents, commit_shard_files
    from pipeline.shards.table import ShardRow
    from pipeline.shards.tar import ShardSample
    from pipeline.storage.layout import tar_key

    attempt_id = f"select-{uuid.uuid4().hex[:16]}"
    wanted: dict[int, list[str]] = defaultdict(list)
    for source_shard, uid in zip(
        members.column("shard_id").to_pylist(), members.column("uid").to_pylist(), strict=True
    ):
        wanted[int(source_shard)].append(uid)
    samples, rows = [], []
    for source_shard, uids in sorted(wanted.items()):
        key = tar_key(source_shard)
        found = read_tar_samples(source_store, key, uids)
        table, _ = read_shard_tables(source_store, {source_shard: markers[source_shard]}, threads=1)
        table = table.filter(pc.is_in(table.column("uid"), value_set=pa.array(uids, pa.string())))
        by_uid = {row["uid"]: row for row in table.to_pylist()}
        for uid in uids:
            samples.append(_sample(found.get(uid, {}), uid, shard_id, source_store.url(key)))
            rows.append(_row(by_uid[uid], source_shard, attempt_id, ShardRow))
    return commit_shard_files(
        output_store,
        shard_id,
        ShardContents([ShardSample(*sample) for sample in samples], rows, _meta_schema(schema)),
        attempt_id=attempt_id,
        legacy_layout=legacy,
        summary_extra={"source_shards": sorted(wanted)},
    )


def _sample(members: dict[str, bytes], uid: str, shard_id: int, tar_url: str):
    from pipeline.shards.images import IMAGE_EXTENSIONS

    images = [ext for ext in members if ext in IMAGE_EXTENSIONS]
    if len(images) != 1 or "json" not in members:
        raise SelectError(
            f"{tar_url}: kept sample {uid} is missing from the tar or incomplete "
            f"(members: {sorted(members) or 'none'}); the source output is damaged"
        )
    meta = json.loads(members["json"])
    meta["source_shard_id"] = meta.get("shard_id")
    meta["shard_id"] = shard_id
    caption = members["txt"].decode("utf-8") if "txt" in members else None  # every member the source had
    return uid, members[images[0]], images[0], meta, caption


def _row(row: dict[str, Any], source_shard: int, attempt_id: str, row_type):
    scores, timings, embeddings, meta = {}, {}, {}, {}
    for name, value in row.items():
        if name in _CORE_COLUMNS:
            continue
        if name.startswith(SCORE_PREFIX):
            scores[name.removeprefix(SCORE_PREFIX)] = value
        elif name.startswith(TIME_PREFIX):
            timings[name.removeprefix(TIME_PREFIX)] = value
        elif name.startswith(EMBEDDING_PREFIX):
            embeddings[name.removeprefix(EMBEDDING_PREFIX)] = value
        else:
            meta[name] = value
    meta.update(source_shard_id=source_shard, attempt_id=attempt_id)
    return row_type(
        uid=row["uid"], status="kept", scores=scores, timings=timings, meta=meta, embeddings=embeddings
    )


def _meta_schema(schema):
    """The source's metadata column types, so every new shard has the same schema."""
    import pyarrow as pa

    fields = [
        field
        for field in schema
        if field.name not in _CORE_COLUMNS
        and not field.name.startswith((SCORE_PREFIX, TIME_PREFIX, EMBEDDING_PREFIX))
    ]
    return pa.schema(fields)
