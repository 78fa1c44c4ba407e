"""Object keys of an output, relative to its root (a folder or s3://bucket/prefix).

run.json, plan.parquet, summary.json, report.html, README.md   written by the driver through a Store
shards/shard-NNNNNN.tar                       kept samples
metadata/shard-NNNNNN.parquet                 every planned row of the shard (its own folder, so a
                                              directory reader takes them as one table)
rejected/shard-NNNNNN.tar                     optional: rejected samples, same layout
_SUCCESS/shard-NNNNNN.json                    the commit marker: the only truth for "done"
_lease.json                                   the lease of the driver writing the output, while it runs
_ledger/ledger-SEQ-ENTRIES-TOKEN.parquet      the markers folded into a few files (pipeline.storage.ledger)
_attempts/shard-NNNNNN/<attempt_id>/<final key>   an attempt's uploads before (and until) publish

Outputs of format 1 (run.json "format": "stylegen-run/1" or "stylegen-select/1") kept the shard
parquets next to the tars (shards/shard-NNNNNN.parquet). Readers take each shard's parquet key from its
commit marker, so both layouts read the same; a resumed format-1 output keeps writing its own layout.
"""

from __future__ import annotations

import re

RUN_KEY = "run.json"
PLAN_KEY = "plan.parquet"
SUMMARY_KEY = "summary.json"
REPORT_KEY = "report.html"
MARKER_PREFIX = "_SUCCESS/"
ATTEMPTS_PREFIX = "_attempts/"
LEASE_KEY = "_lease.json"  # the writing driver's lease (pipeline.run.lease): one writer per output
LEDGER_PREFIX = "_ledger/"  # the commit ledger (pipeline.storage.ledger): markers folded into Parquet
CARD_KEY = "README.md"  # the Hugging Face dataset card
SHARDS_PREFIX = "shards/"
METADATA_PREFIX = "metadata/"
REJECTED_PREFIX = "rejected/"
FINAL_PREFIXES = (SHARDS_PREFIX, METADATA_PREFIX, REJECTED_PREFIX)  # committed shard files live here
LEGACY_FORMATS = frozenset({"stylegen-run/1", "stylegen-select/1"})  # shard parquets under shards/

RUN_FILES = (RUN_KEY, PLAN_KEY, SUMMARY_KEY, REPORT_KEY, CARD_KEY)
_LOG_KEY = re.compile(r"logs/run-\d{8}T\d{12}Z\.log")
_ATTEMPT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHARD_FILE = re.compile(r"(?:shards|metadata|rejected|_SUCCESS)/shard-(\d{6,})\.(?:tar|parquet|json)")
_LEDGER_KEY = re.compile(r"_ledger/ledger-\d{8}-\d{9}-[0-9a-f]{8}\.parquet")
_ATTEMPT_KEY = re.compile(r"_attempts/shard-(\d{6,})/([A-Za-z0-9_-]{1,64})/.+")


def shard_name(shard_id: int) -> str:
    if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
        raise ValueError(f"shard id must be a non-negative int, got {shard_id!r}")
    return f"shard-{shard_id:06d}"


def tar_key(shard_id: int) -> str:
    return f"{SHARDS_PREFIX}{shard_name(shard_id)}.tar"


def table_key(shard_id: int, *, legacy: bool = False) -> str:
    """The shard parquet's key: metadata/ (format 2), or next to the tar in a format-1 output."""
    return f"{SHARDS_PREFIX if legacy else METADATA_PREFIX}{shard_name(shard_id)}.parquet"


def uses_legacy_layout(run_record: object) -> bool:
    """Whether an output's run.json (parsed) is of format 1, whose shard parquets live under shards/."""
    return isinstance(run_record, dict) and run_record.get("format") in LEGACY_FORMATS


def table_key_of(shard_id: int, files: object) -> str:
    """The parquet key a commit marker names (`files`: its final keys), whatever the layout."""
    for key in files:
        if key.endswith(".parquet") and shard_id_of(key) == shard_id:
            return key
    return table_key(shard_id)


def rejected_key(shard_id: int) -> str:
    return f"{REJECTED_PREFIX}{shard_name(shard_id)}.tar"


def marker_key(shard_id: int) -> str:
    return f"{MARKER_PREFIX}{shard_name(shard_id)}.json"


def log_key(when) -> str:
    """The log of a run started at `when` (a UTC datetime)."""
    return f"logs/run-{when.strftime('%Y%m%dT%H%M%S%fZ')}.log"


def is_run_output_key(key: str) -> bool:
    """Whether `key` is one that `stylegen run` writes (what --restart may delete; nothing else)."""
    return (
        key in RUN_FILES
        or shard_id_of(key) is not None
        or attempt_of(key) is not None
        or _LOG_KEY.fullmatch(key) is not None
        or _LEDGER_KEY.fullmatch(key) is not None
    )


def validate_attempt_id(attempt_id: str) -> str:
    if not isinstance(attempt_id, str) or not _ATTEMPT_ID.fullmatch(attempt_id):
        raise ValueError(f"attempt id {attempt_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return attempt_id


def attempt_prefix(shard_id: int, attempt_id: str) -> str:
    return f"{ATTEMPTS_PREFIX}{shard_name(shard_id)}/{validate_attempt_id(attempt_id)}/"


def attempt_key(shard_id: int, attempt_id: str, final_key: str) -> str:
    return attempt_prefix(shard_id, attempt_id) + final_key


def shard_id_of(key: str) -> int | None:
    """The shard id of a final-name or marker key, or None for any other key."""
    match = _SHARD_FILE.fullmatch(key)
    return int(match.group(1)) if match else None


def attempt_of(key: str) -> tuple[int, str] | None:
    """(shard id, attempt id) of an attempt-scoped key, or None for any other key."""
    match = _ATTEMPT_KEY.fullmatch(key)
    return (int(match.group(1)), match.group(2)) if match else None


def validate_key(key: str) -> str:
    """Refuse keys that could leave the output root or collide with temporary files.

    A key is a relative '/'-separated path whose segments are non-empty, are not '.' or '..', and do
    not start with '.' (LocalStore keeps its temporary files under such names)."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise ValueError(f"invalid object key {key!r}: must be a non-empty string of at most 1024 chars")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}: must be a relative '/'-separated path")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            raise ValueError(f"invalid object key {key!r}: empty, '.', '..' or hidden path segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: '' (everything) or a key prefix such as 'shards/'."""
    if prefix:
        validate_key(prefix.rstrip("/") or ".")
    return prefix
