"""Deterministic WebDataset shards: image encoding, the tar of kept samples and the per-shard table.

The same samples always give the same bytes, so a retried or resumed shard is indistinguishable from
the first attempt. Keys are sample uids (dot-free lowercase hex) and nothing else: user ids, prompts
and file names travel inside the per-sample JSON, never in a member name.
"""

from pipeline.shards.images import IMAGE_EXTENSIONS, encode_image, normalize_image_format
from pipeline.shards.keys import sample_json, validate_uid
from pipeline.shards.table import ROW_STATUSES, ShardRow, TableStats, write_shard_table
from pipeline.shards.tar import TAR_MTIME, ShardSample, TarStats, write_tar

__all__ = [
    "IMAGE_EXTENSIONS",
    "ROW_STATUSES",
    "TAR_MTIME",
    "ShardRow",
    "ShardSample",
    "TableStats",
    "TarStats",
    "sample_json",
    "encode_image",
    "normalize_image_format",
    "validate_uid",
    "write_shard_table",
    "write_tar",
]
