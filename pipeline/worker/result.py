"""What the worker hands back: one row's outcome, and a shard attempt's result (with where it ran)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.storage.ledger import LedgerEntry


@dataclass
class RowOutcome:
    """What happened to one planned row."""

    row: dict[str, Any]
    status: str  # kept | rejected | failed
    caption: str | None = None  # the `.txt` member (pipeline.captions)
    reason: str | None = None  # failed: the error; rejected: "<rule> (value <v>)"
    rule: str | None = None
    rule_value: float | None = None
    seed: int | None = None
    image: Any = None  # PIL image for kept/rejected rows
    params: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)
    embeddings: dict[str, Any] = field(default_factory=dict)  # name -> float16 vector (parquet only)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RanOn:
    """The Ray node and actor a worker runs on (both None without Ray), recorded in each shard's
    parquet and result. Not the run's Placement (pipeline.run.execute), which decides where actors go."""

    node_id: str | None = None
    actor_id: str | None = None


@dataclass(frozen=True)
class ShardResult:
    """What a shard attempt did: handed from the worker through its Ray actor to the scheduler and the
    driver as this object (Ray pickles it), never as a dict of string keys."""

    shard_id: int
    attempt_id: str
    committed: bool  # False: another attempt had already committed this shard (ours was discarded)
    rows: int
    kept: int
    rejected: int
    failed: int
    seconds: float
    generate_s: float = 0.0
    commit_s: float = 0.0
    models: dict[str, Any] = field(default_factory=dict)  # fingerprint -> public model info (run.json)
    node_id: str | None = None  # where it ran (see RanOn)
    actor_id: str | None = None
    ledger_entry: LedgerEntry | None = None  # the committed marker, for the driver's commit ledger
    # With a quota (run config `quota`): group -> (kept, rejected, failed) of this shard's rows
    groups: dict[str, tuple[int, int, int]] = field(default_factory=dict)
