"""Object storage for outputs: LocalStore (a folder) and S3Store (boto3) behind one interface, and the
atomic, zombie-safe shard commit (see pipeline.storage.commit for the protocol).

    store = open_store("s3://bucket/run1")           # or a folder; S3 options as keyword arguments
    store.put_bytes("run.json", data)                 # plain objects: put/get/head/list/delete/open
    result = store.commit_shard(7, tar=tar_path, table=parquet_path, summary={"kept": 60, ...},
                                attempt_id=attempt)   # result.won tells whether this attempt owns shard 7
    store.committed_shards()                          # {shard id: ShardMarker}: one LIST + the ledger
    store.finalize(); store.remove_orphans(); store.abort_stale_multipart_uploads()
"""

from pipeline.storage.commit import CommitResult
from pipeline.storage.factory import open_store
from pipeline.storage.local import LocalStore
from pipeline.storage.marker import FileEntry, ShardMarker
from pipeline.storage.objects import (
    LocalFile,
    ObjectInfo,
    ObjectNotFound,
    OutputURIError,
    ShardIntegrityError,
    StorageError,
)
from pipeline.storage.s3 import S3Store
from pipeline.storage.s3_config import S3Config
from pipeline.storage.store import Store

__all__ = [
    "CommitResult",
    "FileEntry",
    "LocalFile",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "OutputURIError",
    "S3Config",
    "S3Store",
    "ShardIntegrityError",
    "ShardMarker",
    "StorageError",
    "Store",
    "open_store",
]
