"""Samples of a committed shard tar, streamed through the store (select, dedup and the report's galleries)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable


def read_tar_samples(store, key: str, uids: Iterable[str]) -> dict[str, dict[str, bytes]]:
    """{uid: {extension: bytes}} for the wanted uids of a shard tar, streamed through the store.
    Members are sorted by uid, so reading stops at the first member past the last wanted sample."""
    from webdataset.tariterators import tar_file_iterator

    wanted = set(uids)
    last = max(wanted, default="")
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    with store.open(key) as handle:
        past_or_wanted = lambda name: (uid := name.split(".", 1)[0]) in wanted or uid > last  # noqa: E731
        for member in tar_file_iterator(handle, select_files=past_or_wanted):
            uid, ext = member["fname"].split(".", 1)
            if uid > last:
                break
            found[uid][ext] = member["data"]
    return dict(found)
