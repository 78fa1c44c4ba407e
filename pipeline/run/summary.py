"""What a run did: the summary it prints and stores (summary.json), what its actor pool did, and the
notes it prints after the summary (nothing to do; why rows failed and where they are listed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunSummary:
    output: str
    shards_planned: int
    shards_resumed: int  # committed before this run started
    shards_committed: int  # committed by this run (including failed-shard records)
    shards_failed: int  # shards recorded with every row failed, over the whole output
    rows: int
    kept: int
    rejected: int
    failed: int
    images_this_run: int
    elapsed_s: float
    images_per_s: float
    actors: int  # the pool's target size (actors requested)
    config_fingerprint: str
    plan_fingerprint: str
    gpus_per_actor: float = 1.0
    log_uri: str | None = None
    report_uri: str | None = None
    card_uri: str | None = None
    failed_shard_errors: dict[int, list[str]] = field(default_factory=dict)
    actors_peak: int = 0  # most actors ready at once
    actors_final: int = 0  # actors ready when the last shard finished
    # [seconds since the run started, actors ready, actors pending] at every change
    actor_timeline: list[tuple[float, int, int]] = field(default_factory=list)
    # With a quota: each group's target, kept count, rows, rounds and why it stayed short (None: reached)
    quota: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["quota"] is None:  # a run without a quota keeps the summary it always had
            del data["quota"]
        return data


@dataclass
class PoolStats:
    """What the actor pool did: its target size and the ready/pending counts over time."""

    target: int = 0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic s, ready, pending)
    stopped: bool = False  # a stop signal ended the scheduling (after draining)

    def peak(self) -> int:
        return max((ready for _, ready, _ in self.timeline), default=0)

    def final(self) -> int:
        return self.timeline[-1][1] if self.timeline else 0


def nothing_to_do(summary: RunSummary) -> str:
    return (
        f"nothing to do: all {summary.shards_planned} shards of {summary.output} are already committed "
        f"({summary.kept} kept, {summary.rejected} rejected, {summary.failed} failed). "
        f"Report: {summary.report_uri or '-'}; --restart starts over."
    )


def quota_note(groups: list[dict[str, Any]], per: str, shown: int = 10) -> str:
    """Each group's target, kept count and rounds; the groups that stayed short with the reason."""
    short = [group for group in groups if group["reason"]]
    target = groups[0]["target"] if groups else 0
    lines = [
        f"quota: {len(groups) - len(short)} of {len(groups)} group(s) by {per} reached {target} kept; "
        f"rounds used: at most {max((group['rounds'] for group in groups), default=0)}"
    ]
    for group in short[:shown]:
        lines.append(
            f"  short: {per} {group['group']!r}: {group['kept']}/{group['target']} kept after "
            f"{group['rows']} rows, {group['rounds']} round(s): {group['reason']}"
        )
    if len(short) > shown:
        lines.append(f"  ... and {len(short) - shown} more short group(s): see summary.json's `quota`")
    return "\n".join(lines)


def failed_rows_note(store, summary: RunSummary, markers: dict[int, Any], top: int = 3) -> str:
    """The most frequent reasons rows failed, each row counted once (its newest result: a row that failed
    again after --retry-failed is one row), and where every failed row is listed."""
    from collections import Counter

    from pipeline.output.run_record import load_run_record, retry_shards
    from pipeline.output.shard_tables import newest_rows, read_shard_tables, with_status
    from pipeline.storage.layout import table_key_of

    with_failures = {s: m for s, m in sorted(markers.items()) if int(m.summary.get("failed", 0))}
    # a failed row's newest result is in its own shard or in a later retry shard (maybe kept there)
    record = load_run_record(store) if with_failures else None
    retried = retry_shards(record) if record else set()
    read = {s: m for s, m in markers.items() if s in with_failures or s in retried}
    columns = ("uid", "shard_id", "status", "reason")
    rows, _ = read_shard_tables(store, read, keep=columns.__contains__)
    failed = with_status(newest_rows(rows), "failed")
    reasons_column = failed.column("reason").to_pylist() if "reason" in failed.column_names else []
    counts = Counter(str(reason or "?").strip() for reason in reasons_column)
    reasons = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    lines = [f"{summary.failed} row(s) failed; most frequent reasons:"]
    lines += [f"  {count} x {reason}" for reason, count in reasons[:top]]
    if len(reasons) > top:
        lines.append(f"  ... and {len(reasons) - top} more reason(s)")
    first = next(iter(with_failures), None)
    where = "-" if first is None else store.url(table_key_of(first, with_failures[first].files))
    lines.append(
        f"every failed row with its reason: status 'failed' in the shard parquets (e.g. {where}) and the "
        f"report's Failed rows ({summary.report_uri or 'stylegen report'})"
    )
    return "\n".join(lines)
