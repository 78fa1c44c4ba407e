"""The commit ledger: what the markers say, folded into a few Parquet files.

The markers (`_SUCCESS/shard-N.json`) stay the truth: a shard is committed when its marker exists, and
the marker is still written last. Reading 10^6 markers one GET each is what made resume, status and the
report cost minutes to hours, so drivers also fold committed markers into ledger files
(`_ledger/ledger-<sequence>-<entries>-<token>.parquet`: per marker its key, size, ETag or
modification time, and its bytes). `read_commits` then costs one LIST of `_SUCCESS/`, one LIST of
`_ledger/` and a few file reads, plus one GET per marker the ledger does not hold yet.

A ledger entry counts only while the listing shows its marker with the same size and ETag (S3) or
modification time (a folder): a marker removed by hand, or deleted and written again, wins over the
ledger, and the disagreement is logged. A damaged ledger file is skipped (logged) and its markers are
read one by one, so a ledger never decides anything the markers do not say; `rebuild_ledger` writes it
anew from the markers. Outputs written before the ledger existed read the same way, from their markers.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.layout import LEDGER_PREFIX, MARKER_PREFIX, shard_id_of
from pipeline.storage.marker import ShardMarker
from pipeline.storage.objects import ObjectInfo, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from pipeline.storage.base import ObjectStore

log = logging.getLogger(__name__)

LEDGER_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("modified", pa.timestamp("us", tz="UTC")),
        ("marker", pa.binary()),
    ]
)
TIER_FILES = 16  # this many files of one size tier (entries within a factor of 16) merge into one
_GET_THREADS = 16


@dataclass(frozen=True)
class LedgerEntry:
    """One committed marker as the listing shows it (its identity) and its bytes."""

    key: str
    size: int
    etag: str | None
    modified: object  # datetime, timezone-aware
    marker: bytes

    @classmethod
    def of(cls, info: ObjectInfo, marker: bytes) -> LedgerEntry:
        return cls(info.key, info.size, info.etag, info.modified, marker)

    def matches(self, info: ObjectInfo) -> bool:
        """Whether the listed marker `info` is the object this entry recorded."""
        if self.size != info.size:
            return False
        if self.etag and info.etag:
            return self.etag == info.etag
        return self.modified == info.modified


@dataclass(frozen=True)
class Commits:
    """What `read_commits` found: every committed shard's marker, and the markers it had to GET because
    the ledger did not hold them (the ones a driver folds into the ledger next)."""

    markers: dict[int, ShardMarker]
    unledgered: list[LedgerEntry]
    ledger_files: list[str]


def read_commits(store: ObjectStore) -> Commits:
    """Every committed shard: the markers' listing, the ledger, and a GET for each marker the ledger
    does not hold (or holds another version of)."""
    listed = [info for info in store.list(MARKER_PREFIX) if shard_id_of(info.key) is not None]
    ledger, files = read_ledger(store)
    known: dict[str, bytes] = {}
    missing: list[ObjectInfo] = []
    for info in listed:
        entry = ledger.pop(info.key, None)
        if entry is not None and entry.matches(info):
            known[info.key] = entry.marker
            continue
        if entry is not None:
            log.warning("the ledger disagrees with %s (another version of it): the marker wins", info.key)
        missing.append(info)
    for key in sorted(ledger):  # recorded, but the listing has no such marker (removed by hand)
        log.warning("the ledger lists %s, which no longer exists: that shard is not committed", key)
    fetched = _get_markers(store, missing)
    unledgered = [LedgerEntry.of(info, data) for info, data in zip(missing, fetched, strict=True) if data]
    found: dict[int, ShardMarker] = {}
    for key, data in [*known.items(), *((entry.key, entry.marker) for entry in unledgered)]:
        marker = ShardMarker.from_bytes(data, store.url(key))
        if marker.shard_id != shard_id_of(key):
            raise StorageError(f"{store.url(key)} holds the marker of shard {marker.shard_id}")
        found[marker.shard_id] = marker
    return Commits(dict(sorted(found.items())), unledgered, files)


def read_ledger(store: ObjectStore) -> tuple[dict[str, LedgerEntry], list[str]]:
    """{marker key: entry} from every readable ledger file (newest entry per key), and the files' keys."""
    files = [info.key for info in store.list(LEDGER_PREFIX) if info.key.endswith(".parquet")]
    return _read_files(store, files), files


def fold_into_ledger(store: ObjectStore, entries: Iterable[LedgerEntry], files: list[str]) -> list[str]:
    """Write `entries` as one new ledger file (after the `files` already there), then merge any
    TIER_FILES files of one size tier into one. Returns the ledger's files now. Merging by tiers keeps
    the work of a run's many small folds to about log16(commits) rewrites of each entry."""
    entries = list(entries)
    if not entries:
        return files
    files = [*files, _write_file(store, entries, _next_sequence(files))]
    while True:
        tiers: dict[int, list[str]] = defaultdict(list)
        for key in files:
            tiers[_tier(key)].append(key)
        full = next((group for _, group in sorted(tiers.items()) if len(group) >= TIER_FILES), None)
        if full is None:
            return files
        files = [key for key in files if key not in full] + [compact_ledger(store, full, files)]


def compact_ledger(store: ObjectStore, group: list[str], files: list[str]) -> str:
    """Merge the ledger files `group` into one new file (written first, after every file of `files`),
    then delete them; returns the new file's key."""
    merged = _write_file(store, list(_read_files(store, group).values()), _next_sequence(files))
    store.delete(group)
    return merged


class LedgerWriter:
    """A driver's side of the ledger: its commits folded in every `every` commits or `interval_s`
    seconds, whichever comes first, and at its last `flush` (a crash loses nothing: the markers stay
    the truth)."""

    def __init__(self, store: ObjectStore, files: list[str], *, every: int = 512, interval_s: float = 300.0):
        self.store, self.files = store, list(files)
        self.every, self.interval_s = every, interval_s
        self._pending: list[LedgerEntry] = []
        self._flushed_at = time.monotonic()

    def add(self, entry: LedgerEntry | None) -> None:
        if entry is not None:
            self._pending.append(entry)
        if len(self._pending) >= self.every or time.monotonic() - self._flushed_at >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        self.files = fold_into_ledger(self.store, self._pending, self.files)
        self._pending = []
        self._flushed_at = time.monotonic()


class CommitView:
    """A writer's view of the committed shards: read once (one listing of the markers plus the ledger),
    kept up to date from the writer's own commit results, and folded into the ledger as it goes, so a
    writer lists the markers once however many shards it commits."""

    def __init__(self, store: ObjectStore):
        self.store = store
        commits = read_commits(store)
        # Markers the ledger lacked (an output from before the ledger, a crash between a commit and the
        # ledger write): folded in now, so the next command reads them from the ledger.
        files = fold_into_ledger(store, commits.unledgered, commits.ledger_files)
        self.markers: dict[int, ShardMarker] = dict(commits.markers)
        self._ledger = LedgerWriter(store, files)

    def add(self, entry: LedgerEntry | None) -> None:
        """A shard this run committed (or saw committed by an earlier attempt): its marker as listed."""
        if entry is None:
            return
        marker = ShardMarker.from_bytes(entry.marker, self.store.url(entry.key))
        self.markers[marker.shard_id] = marker
        self._ledger.add(entry)

    def flush(self) -> None:
        self._ledger.flush()


def rebuild_ledger(store: ObjectStore) -> int:
    """Delete every ledger file and write one anew from the markers (one LIST, one GET per marker).
    Returns the number of markers it holds."""
    old = [info.key for info in store.list(LEDGER_PREFIX)]
    store.delete(old)
    commits = read_commits(store)
    fold_into_ledger(store, commits.unledgered, [])
    return len(commits.unledgered)


def _read_files(store: ObjectStore, files: list[str]) -> dict[str, LedgerEntry]:
    entries: dict[str, LedgerEntry] = {}
    for key in files:  # sorted by sequence number: a later file's entry replaces an earlier one
        try:
            table = pq.read_table(io.BytesIO(store.get_bytes(key)))
            if not table.schema.equals(LEDGER_SCHEMA, check_metadata=False):
                raise ValueError(f"unexpected columns {table.schema.names}")
        except ObjectNotFound:
            continue  # compacted away since the listing; its entries are in the newer file
        except (pa.ArrowException, ValueError) as error:
            log.warning("ledger file %s is unreadable (%s): its markers are read one by one", key, error)
            continue
        for row in table.to_pylist():
            entries[row["key"]] = LedgerEntry(**row)
    return entries


def _write_file(store: ObjectStore, entries: list[LedgerEntry], sequence: int) -> str:
    entries = sorted(entries, key=lambda entry: entry.key)
    table = pa.table(
        {
            "key": [entry.key for entry in entries],
            "size": [entry.size for entry in entries],
            "etag": [entry.etag for entry in entries],
            "modified": [entry.modified for entry in entries],
            "marker": [entry.marker for entry in entries],
        },
        schema=LEDGER_SCHEMA,
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    key = f"{LEDGER_PREFIX}ledger-{sequence:08d}-{len(entries):09d}-{uuid.uuid4().hex[:8]}.parquet"
    store.put_bytes(key, sink.getvalue())  # whole: readers see the file or nothing
    return key


def _next_sequence(files: list[str]) -> int:
    return max((_name_field(key, 1) for key in files), default=0) + 1


def _tier(key: str) -> int:
    """A file's size tier: its entry count's order of magnitude in base TIER_FILES."""
    entries, tier = _name_field(key, 2), 0
    while entries >= TIER_FILES:  # integers: a float log misplaces exact powers
        entries, tier = entries // TIER_FILES, tier + 1
    return tier


def _name_field(key: str, index: int) -> int:
    """ledger-<sequence>-<entries>-<token>.parquet: field 1 is the sequence, 2 the entry count."""
    return int(key.rsplit("/", 1)[-1].split("-")[index])


def _get_markers(store: ObjectStore, infos: list[ObjectInfo]) -> list[bytes | None]:
    def get(info: ObjectInfo) -> bytes | None:
        try:
            return store.get_bytes(info.key)
        except ObjectNotFound:
            return None  # deleted since the listing

    if len(infos) <= 1:
        return [get(info) for info in infos]
    with ThreadPoolExecutor(max_workers=_GET_THREADS) as pool:
        return list(pool.map(get, infos))
