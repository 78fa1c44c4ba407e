"""Samples of a committed shard tar, streamed through the store (select, dedup and the report's galleries)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable


def read_tar_samples(store, key: str, uids: Iterable[str]) -> dict[str, dict[str, bytes]]:
    """{uid: {extension: bytes}} for the wanted uids of a shard tar, streamed through the store.
    Members are sorted by uid, so reading stops after the last wanted sample."""
    from webdataset.tariterators import tar_file_iterator

    wanted = set(uids)
    last = max(wanted, default="")
    found: dict[str, dict[str, bytes]] = defaultdict(dict)
    with store.open(key) as handle:
        for member in tar_file_iterator(handle, select_files=lambda name: name.split(".", 1)[0] in wanted):
            uid, ext = member["fname"].split(".", 1)
            found[uid][ext] = member["data"]
            if uid == last and "json" in found[uid] and len(found[uid]) > 1:
                break
    return dict(found)
