"""The driver's view of the committed shards: read once when the run starts (one listing of the markers
plus the ledger, pipeline/storage/ledger.py), kept up to date from this run's own commit results, and
folded into the ledger as it goes, so a run lists the markers once however many shards it has."""

from __future__ import annotations

from pipeline.storage.ledger import LedgerEntry, LedgerWriter, fold_into_ledger, read_commits
from pipeline.storage.marker import ShardMarker


class RunCommits:
    def __init__(self, store):
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
