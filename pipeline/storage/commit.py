"""The shard commit protocol: a shard exists for readers only once its marker exists.

commit_shard, for files the caller has finished writing locally:
 1. If `_SUCCESS/shard-N.json` already exists, the shard is done: complete its publish if a crash
    interrupted it (below) and report that this attempt lost. Nothing is uploaded.
 2. Upload every file to an attempt-scoped key `_attempts/shard-N/<attempt_id>/<final key>` and verify
    its size and sha256. Nothing under a final name changes, so a kill here leaves no visible shard
    (an unfinished multipart upload leaves no object at all; abort_stale_multipart_uploads frees it).
 3. Create the marker exclusively (If-None-Match: * on S3, link()/O_EXCL locally). The marker names
    the attempt and every file with size and sha256, plus the caller's summary (kept/rejected/failed
    counts, ...). This is the commit point: whoever creates the marker owns the shard.
 4. Lost (the marker existed: 412): delete this attempt's uploads and report the winner. A zombie or
    duplicate attempt therefore changes nothing.
 5. Won: publish the attempt's objects under their final names (server-side copy on S3, rename
    locally), verify them, then delete the attempt keys.

A crash between 3 and 5 leaves a marker whose final names are missing or partial. `finalize` (and any
later commit_shard call for that shard) completes it from the attempt the marker names; the files of
any other attempt are never published. `remove_orphans` deletes what crashed or lost attempts left,
and final-name objects that no marker accounts for.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.storage.layout import (
    ATTEMPTS_PREFIX,
    FINAL_PREFIXES,
    attempt_key,
    attempt_of,
    attempt_prefix,
    marker_key,
    rejected_key,
    shard_id_of,
    table_key,
    tar_key,
    validate_attempt_id,
)
from pipeline.storage.ledger import LedgerEntry, read_commits
from pipeline.storage.marker import FileEntry, ShardMarker
from pipeline.storage.objects import LocalFile, ObjectInfo, ObjectNotFound, ShardIntegrityError, StorageError

if TYPE_CHECKING:
    from pipeline.storage.base import ObjectStore, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommitResult:
    shard_id: int
    attempt_id: str  # this attempt
    won: bool  # True if this attempt's files are the shard
    marker: ShardMarker  # the committed marker (the winner's when this attempt lost)
    marker_info: ObjectInfo | None = None  # the marker as listings show it (the driver's ledger entry)

    @property
    def committed(self) -> bool:
        """Alias of `won`: this attempt's files are the committed shard."""
        return self.won

    @property
    def ledger_entry(self) -> LedgerEntry | None:
        """The committed marker as the driver folds it into the ledger."""
        return None if self.marker_info is None else LedgerEntry.of(self.marker_info, self.marker.to_bytes())

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "attempt_id": self.attempt_id,
            "won": self.won,
            "marker": self.marker.model_dump(mode="json"),
        }


def commit_shard(
    store: ObjectStore,
    shard_id: int,
    *,
    tar: Path | LocalFile,
    table: Path | LocalFile,
    rejected: Path | LocalFile | None = None,
    summary: Mapping[str, Any],
    attempt_id: str | None = None,
    progress: Progress | None = None,
    legacy_layout: bool = False,
) -> CommitResult:
    """Commit a shard's finished local files (see the module docstring). Raises StorageError (or a
    subclass) when the store fails; the caller retries with a new attempt id. `legacy_layout` puts the
    parquet next to the tar, as format-1 outputs have it (pipeline.storage.layout)."""
    attempt_id = validate_attempt_id(attempt_id or uuid.uuid4().hex)
    files = {tar_key(shard_id): tar, table_key(shard_id, legacy=legacy_layout): table}
    if rejected is not None:
        files[rejected_key(shard_id)] = rejected
    summary = dict(summary)
    try:
        json.dumps(summary, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"shard {shard_id}: the commit summary must be plain JSON: {error}") from None

    existing = read_marker(store, shard_id)
    if existing is not None:
        finalize_shard(store, existing)
        log.info("shard %d was already committed by attempt %s", shard_id, existing.attempt_id)
        return CommitResult(shard_id, attempt_id, False, existing, store.head(marker_key(shard_id)))

    local = {
        key: file if isinstance(file, LocalFile) else LocalFile.from_path(file) for key, file in files.items()
    }
    entries: dict[str, FileEntry] = {}
    try:
        for key, file in local.items():
            upload_key = attempt_key(shard_id, attempt_id, key)
            entries[key] = FileEntry(size=file.size, sha256=file.sha256, attempt_key=upload_key)
            store.put_file(upload_key, file.path, sha256=file.sha256, progress=progress)
    except BaseException:
        _delete_quietly(store, [entry.attempt_key for entry in entries.values()])
        raise

    marker = ShardMarker(
        shard_id=shard_id,
        attempt_id=attempt_id,
        committed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files=entries,
        summary=summary,
    )
    # The commit point. If this raises, we cannot tell whether the marker was created, so the uploads
    # stay: finalize publishes them if it was, remove_orphans deletes them if it was not.
    if store.create_if_absent(marker_key(shard_id), marker.to_bytes()):
        finalize_shard(store, marker)
        return CommitResult(shard_id, attempt_id, True, marker, store.head(marker_key(shard_id)))

    _delete_quietly(store, [entry.attempt_key for entry in entries.values()])
    winner = read_marker(store, shard_id)
    if winner is None:
        raise StorageError(f"{store.url(marker_key(shard_id))} existed a moment ago and is gone now")
    finalize_shard(store, winner)
    log.info("shard %d: attempt %s lost to attempt %s", shard_id, attempt_id, winner.attempt_id)
    return CommitResult(shard_id, attempt_id, False, winner, store.head(marker_key(shard_id)))


def finalize_shard(store: ObjectStore, marker: ShardMarker, uploads: Iterable[str] | None = None) -> None:
    """Make sure every file the marker names is under its final name, then drop the attempt's keys.

    `uploads` are the keys present under the marker's attempt prefix (listed when not given)."""
    if uploads is None:
        uploads = [info.key for info in store.list(attempt_prefix(marker.shard_id, marker.attempt_id))]
    uploads = set(uploads)
    for key, entry in sorted(marker.files.items()):
        if entry.attempt_key in uploads:
            try:
                store.publish(entry.attempt_key, key, entry.size, entry.sha256)
                continue
            except ObjectNotFound:
                pass  # a concurrent finalizer published it first; check below
        if not _matches(store.head(key), entry):
            raise ShardIntegrityError(
                f"shard {marker.shard_id}: {store.url(marker_key(marker.shard_id))} names attempt "
                f"{marker.attempt_id}, but {store.url(key)} is missing or differs and "
                f"{store.url(entry.attempt_key)} is gone; delete the marker to redo the shard"
            )
    store.delete(sorted(uploads))


def _matches(info: ObjectInfo | None, entry: FileEntry) -> bool:
    return info is not None and info.size == entry.size and info.sha256 in (None, entry.sha256)


def _delete_quietly(store: ObjectStore, keys: list[str]) -> None:
    """Best-effort cleanup on a path that is already failing or lost; remove_orphans catches the rest."""
    try:
        store.delete(keys)
    except Exception as error:  # noqa: BLE001 - the original outcome matters more than cleanup
        log.warning("could not delete attempt objects %s: %s", keys, error)


def read_marker(store: ObjectStore, shard_id: int) -> ShardMarker | None:
    key = marker_key(shard_id)
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return None
    return ShardMarker.from_bytes(data, store.url(key))


def committed_shards(store: ObjectStore) -> dict[int, ShardMarker]:
    """Every committed shard: the markers' listing, read through the ledger (pipeline.storage.ledger)."""
    return read_commits(store).markers


def finalize(store: ObjectStore) -> list[int]:
    """Complete every committed shard whose final names are missing (a crash between marker and
    publish) and drop the winners' leftover attempt keys. Returns the shard ids it had to complete.
    Uses listings, so a finished output costs a few LISTs and no per-shard requests."""
    markers = committed_shards(store)
    uploads: dict[tuple[int, str], set[str]] = defaultdict(set)
    for info in store.list(ATTEMPTS_PREFIX):
        if (parsed := attempt_of(info.key)) is not None:
            uploads[parsed].add(info.key)
    finals = {info.key: info for prefix in FINAL_PREFIXES for info in store.list(prefix)}
    completed = []
    for shard_id, marker in sorted(markers.items()):
        leftovers = uploads.get((shard_id, marker.attempt_id), set())
        published = all(_matches(finals.get(key), entry) for key, entry in marker.files.items())
        if published and not leftovers:
            continue
        finalize_shard(store, marker, leftovers)
        if not published:
            completed.append(shard_id)
    return completed


@dataclass(frozen=True)
class Sweep:
    completed: list[int]  # shards whose interrupted publish this sweep completed
    removed: list[str]  # attempt objects of attempts that own no shard


def sweep_attempts(
    store: ObjectStore,
    markers: Mapping[int, ShardMarker],
    older_than: timedelta,
    dead: Iterable[tuple[int, str]] = (),
) -> Sweep:
    """What a driver does at the end of a run, from one LIST of `_attempts/` (never of the shards):
    complete every committed shard whose winning attempt left objects there (a publish interrupted
    between marker and rename/copy: the winner's keys go only once its files are final), and delete the
    objects of attempts older than `older_than` that own no shard. `markers` is the driver's view of the
    committed shards; a candidate orphan's marker is read again before deleting, so an attempt that
    committed meanwhile keeps its files. `dead`: (shard id, attempt id) of attempts known to have ended
    without a result (the caller's own), removed whatever their age. The full checks of `finalize` and
    `remove_orphans` also list the final names (every tar): they are for repairs, not for every run."""
    dead = set(dead)
    cutoff = datetime.now(timezone.utc) - older_than
    groups: dict[tuple[int, str], list[ObjectInfo]] = defaultdict(list)
    for info in store.list(ATTEMPTS_PREFIX):
        if (parsed := attempt_of(info.key)) is not None:
            groups[parsed].append(info)
    completed, removed = [], []
    for (shard_id, attempt_id), infos in sorted(groups.items()):
        marker = markers.get(shard_id)
        if marker is None or marker.attempt_id != attempt_id:
            if (shard_id, attempt_id) not in dead and any(info.modified > cutoff for info in infos):
                continue  # may still be uploading
            marker = read_marker(store, shard_id)  # committed since the driver's view was taken?
        if marker is not None and marker.attempt_id == attempt_id:
            finalize_shard(store, marker, [info.key for info in infos])
            completed.append(shard_id)
        else:
            removed += [info.key for info in infos]
    store.delete(removed)
    return Sweep(completed, removed)


def remove_orphans(store: ObjectStore, older_than: timedelta = timedelta(hours=1)) -> list[str]:
    """Delete, among objects older than `older_than`:
    - attempt objects of attempts no marker names (lost, crashed or killed attempts);
    - final-name objects (shards/, metadata/, rejected/) that no marker accounts for.
    The winners' own attempt keys are left to finalize. An attempt that is still uploading has no
    marker yet, so while writers run keep `older_than` above the longest commit; older_than=0 is for
    when no writer is active. Returns the deleted keys."""
    cutoff = datetime.now(timezone.utc) - older_than
    attempts = store.list(ATTEMPTS_PREFIX)
    finals = [info for prefix in FINAL_PREFIXES for info in store.list(prefix)]
    # Markers are read after the listings: a shard publishes only after its marker exists, so every
    # final name listed has its marker read here, even if it was committed during the listing (a local
    # publish keeps the upload's mtime, so the age cutoff alone would not protect it).
    markers = committed_shards(store)
    doomed = []
    for info in attempts:
        parsed = attempt_of(info.key)
        if parsed is None or info.modified > cutoff:
            continue
        marker = markers.get(parsed[0])
        if marker is None or marker.attempt_id != parsed[1]:
            doomed.append(info.key)
    for info in finals:
        shard_id = shard_id_of(info.key)
        if shard_id is None or info.modified > cutoff:
            continue
        marker = markers.get(shard_id)
        if marker is None or info.key not in marker.files:
            doomed.append(info.key)
    store.delete(doomed)
    for key in doomed:
        log.info("removed orphan %s", store.url(key))
    return doomed
