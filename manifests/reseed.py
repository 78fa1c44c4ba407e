"""New rows for a quota (pipeline/run/quota.py): a group's planned rows again, with new seeds.

Copy k (k = 0, 1, ...) of planned row `uid` in reseeding round r gets the seed

    first 8 bytes, big-endian, of sha256(b"stylegen-reseed-v1" + field(uid) + field(r) + field(k)),
    top bit cleared (0 <= seed < 2**63)

with `field` the tagged encoding of manifests/uid.py. The new row is the planned row with that seed, so
its uid comes from the same uid function (it differs from every planned row's, and is the same on every
machine and rerun); `origin_uid` names the planned row and `quota_round` the round. A run's planned rows
have neither column until a quota first reseeds (then they are null).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from manifests.schema import ORIGIN_UID, QUOTA_COLUMNS, QUOTA_ROUND, SEED, UID
from manifests.uid import SEED_MASK, compute_uids, tagged_field

RESEED_PREFIX = b"stylegen-reseed-v1"


def reseed_seed(origin_uid: str, round_: int, copy: int) -> int:
    message = RESEED_PREFIX + tagged_field(origin_uid) + tagged_field(round_) + tagged_field(copy)
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "big") & SEED_MASK


def reseed_rows(planned: pa.Table, round_: int, count: int) -> pa.Table:
    """`count` new plan rows from a group's `planned` rows (in plan order, cycled: the first row's copy 0,
    the second row's copy 0, ..., then every row's copy 1). `planned` holds planned (not reseeded) rows'
    plan columns without `shard_id`; the result has the same columns, `seed` and `uid` new, then
    `origin_uid` and `quota_round`."""
    if count <= 0 or planned.num_rows == 0:
        return _with_origin(planned.slice(0, 0), pa.array([], pa.string()), 0)
    picks = np.arange(count) % planned.num_rows
    copies = planned.take(pa.array(picks))
    copies = copies.drop_columns([name for name in QUOTA_COLUMNS if name in copies.column_names])
    origins = copies.column(UID).combine_chunks()
    seeds = [
        reseed_seed(origin, round_, int(copy))
        for origin, copy in zip(origins.to_pylist(), np.arange(count) // planned.num_rows, strict=True)
    ]
    copies = copies.set_column(copies.schema.get_field_index(SEED), SEED, pa.array(seeds, pa.int64()))
    copies = copies.set_column(copies.schema.get_field_index(UID), UID, compute_uids(copies))
    return _with_origin(copies, origins, round_)


def _with_origin(rows: pa.Table, origins: pa.Array, round_: int) -> pa.Table:
    rows = rows.append_column(ORIGIN_UID, origins.cast(pa.string()))
    return rows.append_column(QUOTA_ROUND, pa.array(np.full(rows.num_rows, round_, np.int32)))
