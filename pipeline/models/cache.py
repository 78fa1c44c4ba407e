"""Model weights staged in object storage, copied once per node into the local model cache.

A `model_paths` entry (or a scorer model in `scoring.options`) may be `s3://bucket/prefix/`: a folder
laid out like the hub repo (what `stylegen models stage` writes) or one checkpoint file (CSD). The
loaders never see S3: `local_copy` returns a local folder (or file) with the same layout, and they read
it like any local folder, so such an entry never causes a hub call.

Under the model cache (run config `model_cache_dir`, else $STYLEGEN_CACHE):

    s3-models/<name>-<hash>/<name>[/...]   the copy, at the objects' keys below the URI's parent
    s3-models/<name>-<hash>.json           per file: size, ETag, mtime and ctime of the verified copy
    s3-models/<name>-<hash>.lock           flock held by the one process checking or filling the copy
    s3-models/<name>-<hash>.partial/       downloads in progress (cleared by the next lock holder)

Every process that loads a model (one per GPU actor) takes the lock, lists the prefix (one request) and
compares the listing with the record and the files on disk. The first process on a node downloads; the
others wait on the lock, then find everything in place. A file missing, or whose size, ETag or mtime no
longer matches (a killed download, a truncated or edited file, a re-staged object), is downloaded again.
A file whose ctime changed since it was verified (written to in place with its mtime set back, copied,
chmod-ed; or recorded by an older version) has its bytes hashed against the staged sha256: downloaded
again if they differ, recorded if not. Each download is checked against the listed size and the sha256
that `stylegen models stage` stores with the object (else the MD5 ETag of a single-part upload) before it
is moved into place. Not detected: bytes that change on disk with no write through the file system (bit
rot), which only hashing every file at every load would find.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import UserError
from pipeline.storage import ObjectInfo, S3Store, StorageError, open_store

log = logging.getLogger(__name__)

CACHE_FOLDER = "s3-models"
_CHUNK = 8 * 1024 * 1024
_MD5 = re.compile(r"[0-9a-f]{32}")  # a multipart ETag ("<md5>-<parts>") is not the content's MD5


class ModelCacheError(UserError, RuntimeError):
    """A staged model cannot be copied; the message names the S3 object or prefix."""


def default_cache_dir() -> Path:
    """Where models are cached: $STYLEGEN_CACHE, else ~/.cache/stylegen."""
    return Path(os.environ.get("STYLEGEN_CACHE") or Path.home() / ".cache" / "stylegen")


def is_s3_uri(source: Any) -> bool:
    return isinstance(source, str) and source.startswith("s3://")


def local_copy(uri: str, cache_dir: Path | str | None = None, s3_options: dict | None = None) -> Path:
    """This node's verified copy of the staged folder or file `uri`, downloaded first if missing or
    stale. `s3_options` are the run config's `storage` options (endpoint, addressing style, ...)."""
    bucket, parent, name, folder_only = _split(uri)
    try:
        store = _parent_store(bucket, parent, s3_options)
        digest = hashlib.sha256(f"{store.endpoint_url}|{bucket}/{parent}/{name}".encode()).hexdigest()[:12]
        entry = Path(cache_dir or default_cache_dir()).expanduser() / CACHE_FOLDER / f"{name}-{digest}"
        entry.parent.mkdir(parents=True, exist_ok=True)
        with _node_lock(entry.parent / f"{entry.name}.lock", uri):
            listing = _listing(store, name, folder_only, uri)
            _CacheEntry(entry, store, uri).sync(listing)
    except StorageError as error:
        raise ModelCacheError(str(error)) from None
    except OSError as error:  # an unwritable or full cache folder (e.g. a root-owned hostPath)
        raise ModelCacheError(f"copying {uri} into the model cache failed: {error}") from None
    return entry / name


def staged_objects(uri: str, s3_options: dict | None = None) -> dict[str, ObjectInfo]:
    """The objects a node would copy for `uri` (one LIST): for the driver's check before a run starts."""
    bucket, parent, name, folder_only = _split(uri)
    try:
        return _listing(_parent_store(bucket, parent, s3_options), name, folder_only, uri)
    except StorageError as error:
        raise ModelCacheError(str(error)) from None


def _parent_store(bucket: str, parent: str, s3_options: dict | None) -> S3Store:
    store = open_store(f"s3://{bucket}/{parent}", **(s3_options or {}))
    assert isinstance(store, S3Store)
    return store


def _split(uri: str) -> tuple[str, str, str, bool]:
    """s3://bucket/a/b/name[/] -> (bucket, "a/b", "name", whether it must be a folder)."""
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key.strip("/"):
        raise ModelCacheError(f"{uri!r} is not an s3://bucket/prefix URI of a staged model folder or file")
    parent, _, name = key.rstrip("/").rpartition("/")
    return parsed.netloc, parent, name, key.endswith("/")


@contextmanager
def _node_lock(path: Path, uri: str) -> Iterator[None]:
    """An exclusive flock on `path`: shared by every process (and container) on the node that sees
    the same cache folder; released by the kernel if the holder dies."""
    with open(path, "a+b") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process on this node to finish copying %s", uri)
            fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _listing(store: S3Store, name: str, folder_only: bool, uri: str) -> dict[str, ObjectInfo]:
    """The staged objects by key (relative to the URI's parent): the one object `name`, or every object
    under `name/`. Hidden keys (.gitattributes, .cache/...) and folder markers are not model files."""
    objects = store.list(name)  # `name`, `name/...` and siblings that merely start with `name`
    if not folder_only:
        exact = [info for info in objects if info.key == name]
        if exact:
            return {name: exact[0]}
    inside = {
        info.key: info
        for info in objects
        if info.key.startswith(f"{name}/")
        and not info.key.endswith("/")
        and not any(part.startswith(".") for part in info.key.split("/"))
    }
    if not inside:
        where = uri.rstrip("/")
        raise ModelCacheError(
            f"nothing staged at {uri}: no object {where} and no objects under {where}/ "
            "(stage the weights with `stylegen models stage --to s3://...`)"
        )
    return inside


class _CacheEntry:
    """One cached copy: the folder, its record of verified files, and how to bring it up to date."""

    def __init__(self, folder: Path, store: S3Store, uri: str) -> None:
        self.folder, self.store, self.uri = folder, store, uri
        self.record_path = folder.parent / f"{folder.name}.json"
        self.partial = folder.parent / f"{folder.name}.partial"

    def sync(self, listing: dict[str, ObjectInfo]) -> None:
        """Make the folder hold exactly the listed objects, downloading what is missing or stale."""
        shutil.rmtree(self.partial, ignore_errors=True)  # a killed holder's half-downloaded files
        record = {key: value for key, value in self._read_record().items() if key in listing}
        self._remove_unlisted(listing)
        stale, rechecked = {}, False
        for key, info in listing.items():
            intact = self._intact(key, info, record.get(key))
            if intact is None:  # touched since it was verified: its bytes decide
                problem = self._changed(key, info)
                if problem is None:
                    record[key], rechecked = self._verified(key, info), True
                    continue
                log.warning("%s: the cached copy %s; downloading it again", self.store.url(key), problem)
            if not intact:
                stale[key] = info
        if rechecked:
            self._write_record(record)
        if not stale:
            return
        total = sum(info.size for info in stale.values())
        self._check_space(total)
        log.info(
            "copying %s: %d files, %.2f GB into the node's model cache", self.uri, len(stale), total / 1e9
        )
        started = time.monotonic()
        self.partial.mkdir(parents=True)
        for key, info in stale.items():
            record[key] = self._download(key, info)
            self._write_record(record)  # progress survives a kill: done files are not fetched again
        shutil.rmtree(self.partial, ignore_errors=True)
        log.info("copied %s in %.1f s", self.uri, time.monotonic() - started)

    def _intact(self, key: str, info: ObjectInfo, recorded: dict | None) -> bool | None:
        """True: the file is as verified; False: download it; None: the same size, ETag and mtime, but
        its ctime changed since it was verified (a write with the mtime set back, a copy, chmod)."""
        try:
            stat = (self.folder / key).stat()
        except FileNotFoundError:
            return False
        if not (
            recorded is not None
            and stat.st_size == info.size == recorded["size"]
            and recorded["etag"] == info.etag
            and recorded["mtime_ns"] == stat.st_mtime_ns
        ):
            return False
        return True if recorded.get("ctime_ns") == stat.st_ctime_ns else None

    def _changed(self, key: str, info: ObjectInfo) -> str | None:
        """What differs between the cached file's bytes and the staged object's, or None."""
        head = self.store.head(key)
        return _mismatch(self.folder / key, info, head.sha256 if head is not None else None)

    def _verified(self, key: str, info: ObjectInfo) -> dict[str, Any]:
        stat = (self.folder / key).stat()
        return {
            "size": stat.st_size,
            "etag": info.etag,
            "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns,
        }

    def _download(self, key: str, info: ObjectInfo) -> dict[str, Any]:
        head = self.store.head(key)
        expected_sha256 = head.sha256 if head is not None else None
        temp = self.partial / uuid.uuid4().hex
        problem = None
        for _ in range(2):  # botocore retries requests; this retries a copy whose bytes came out wrong
            self.store.get_file(key, temp)
            problem = _mismatch(temp, info, expected_sha256)
            if problem is None:
                break
            log.warning("%s: downloaded copy %s; downloading it again", self.store.url(key), problem)
        else:
            raise ModelCacheError(f"{self.store.url(key)}: the downloaded copy {problem} (twice)")
        final = self.folder / key
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        return self._verified(key, info)

    def _remove_unlisted(self, listing: dict[str, ObjectInfo]) -> None:
        """Files of an earlier staging that is no longer there (so the copy mirrors S3 exactly)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.rglob("*"), reverse=True):
            key = path.relative_to(self.folder).as_posix()
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            elif not path.is_dir() and key not in listing:
                path.unlink()

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.folder.parent).free
        if free < needed:
            raise ModelCacheError(
                f"copying {self.uri} needs {needed / 1e9:.2f} GB, but the model cache "
                f"({self.folder.parent}) has {free / 1e9:.2f} GB free"
            )

    def _read_record(self) -> dict[str, dict]:
        try:
            record = json.loads(self.record_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}  # no record (or a torn one): every file is checked as if new
        return record if isinstance(record, dict) else {}

    def _write_record(self, record: dict[str, dict]) -> None:
        temp = self.record_path.with_name(f"{self.record_path.name}.{uuid.uuid4().hex}")
        temp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(temp, self.record_path)


def _mismatch(path: Path, info: ObjectInfo, sha256: str | None) -> str | None:
    """What is wrong with a downloaded copy, or None: the size, then the sha256 stored with the object,
    else a single-part upload's MD5 ETag."""
    size = path.stat().st_size
    if size != info.size:
        return f"has {size} bytes, the object {info.size}"
    if sha256:
        digest, kind, expected = hashlib.sha256(), "sha256", sha256
    elif info.etag and _MD5.fullmatch(info.etag):
        digest, kind, expected = hashlib.md5(usedforsecurity=False), "MD5", info.etag
    else:
        return None
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return None if digest.hexdigest() == expected else f"has {kind} {digest.hexdigest()}, expected {expected}"


def with_local_copies(
    sources: dict[str, Any], cache_dir: Path | str | None = None, s3_options: dict | None = None
) -> dict[str, Any]:
    """`sources` (e.g. scoring options) with every s3:// value replaced by its local copy; an error
    names the key."""
    copied = dict(sources)
    for key, value in sources.items():
        if is_s3_uri(value):
            try:
                copied[key] = str(local_copy(value, cache_dir, s3_options))
            except ModelCacheError as error:
                raise ModelCacheError(f"{key}: {error}") from None
    return copied
