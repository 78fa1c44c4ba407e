"""Quotas: `kept` samples per group (run config `quota`), reached by reseeding the groups that fall short.

A group is the rows sharing the value of `quota.per` (style, prompt, content or a manifest column). Once
every shard holding rows of a group is done and the group has fewer kept samples than the target, it gets
new rows: its planned rows again with seeds derived from (uid, round, copy) (manifests/reseed.py). How
many: enough that the expected kept count reaches the target at the group's measured yield (kept / rows
done, one standard error optimistic before the last round so a small unlucky sample does not order far
too many rows; a group with nothing kept yet is taken to keep one row more than it did, so the number is
bounded),
never more than `max_factor` x its planned rows generated in all, for at most `max_rounds` rounds. A group
whose rows all failed is not reseeded: its inputs are broken, and more seeds would fail the same way.

New rows become a generation of the run (pipeline/run/append.py's add_generation: plan.parquet, then
run.json, the commit point) before they are scheduled, so a run stopped at any point, between rounds
included, resumes where it was, and a rerun of a finished run finds nothing to do. The groups ready to
reseed are planned together whenever the scheduler's queue runs low (`QuotaLoop.more_shards`), so the
pool keeps working across round boundaries and plan.parquet is rewritten a few times per round, not once
per group. The rows are the same whenever the groups finish; which shard a reseeded row lands in depends
on when its group finished.

The driver holds the plan's (uid, shard, group, round) columns while it runs a quota: memory grows with
the plan, unlike a run without a quota.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from manifests.reseed import reseed_rows
from manifests.schema import QUOTA_ROUND
from pipeline.output.run_record import generations, retry_shards, shard_sizes
from pipeline.output.shard_dataset import ShardDataset
from pipeline.output.shard_tables import newest_rows
from pipeline.run.append import add_generation, stored_plan
from pipeline.run.resume import read_run_record
from pipeline.run_config import QuotaSection

log = logging.getLogger("stylegen.driver")


@dataclass
class GroupState:
    planned: int = 0  # rows of the manifest's plan (round 0)
    generated: int = 0  # rows in every round (retries of failed rows not counted)
    rounds: int = 0  # reseeding rounds so far
    kept: int = 0
    rejected: int = 0
    failed: int = 0
    open_shards: int = 0  # shards holding rows of this group that are not done yet

    @property
    def done(self) -> int:
        return self.kept + self.rejected + self.failed


@dataclass(frozen=True)
class GroupOutcome:
    """One group's line in the console, summary.json, status and the report."""

    group: str
    target: int
    kept: int
    rows: int  # rows generated for it, in all
    rounds: int
    reason: str | None  # why it stayed short; None when it reached the target

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "target": self.target,
            "kept": self.kept,
            "rows": self.rows,
            "rounds": self.rounds,
            "reason": self.reason,
        }


@dataclass
class QuotaTracker:
    """Each group's counts and open shards, kept up to date from the shards' results."""

    quota: QuotaSection
    groups: dict[str, GroupState] = field(default_factory=lambda: defaultdict(GroupState))
    shard_groups: dict[int, Counter] = field(default_factory=dict)  # shard id -> rows per group
    retry: set[int] = field(default_factory=set)  # shards of --retry-failed generations
    ready: set[str] = field(default_factory=set)  # groups whose shards are all done and that are short

    @classmethod
    def load(
        cls, store, record: dict[str, Any], markers: dict[int, Any], quota: QuotaSection
    ) -> QuotaTracker:
        """The state of a run from its plan.parquet and its committed shards' parquets."""
        tracker = cls(quota, retry=retry_shards(record))
        plan, _ = stored_plan(store, record)
        plan = plan.select(
            [name for name in ("shard_id", "uid", quota.per, QUOTA_ROUND) if name in plan.column_names]
        )
        groups = _group_keys(plan, quota)
        rounds = plan.column(QUOTA_ROUND).to_pylist() if QUOTA_ROUND in plan.column_names else None
        uid_group = {}
        for index, (shard_id, uid) in enumerate(
            zip(plan.column("shard_id").to_pylist(), plan.column("uid").to_pylist(), strict=True)
        ):
            group = groups[index]
            uid_group[uid] = group
            tracker.shard_groups.setdefault(shard_id, Counter())[group] += 1
            if shard_id in tracker.retry:
                continue
            state = tracker.groups[group]
            state.generated += 1
            round_ = (rounds[index] or 0) if rounds else 0
            state.planned += round_ == 0
            state.rounds = max(state.rounds, round_)
        for shard_id, counts in tracker.shard_groups.items():
            if shard_id not in markers:
                for group in counts:
                    tracker.groups[group].open_shards += 1
        done = {s: m for s, m in markers.items() if s in tracker.shard_groups}
        rows = newest_rows(ShardDataset(store, done).read(["uid", "shard_id", "status"]))
        for uid, status in zip(
            rows.column("uid").to_pylist(), rows.column("status").to_pylist(), strict=True
        ):
            state = tracker.groups[uid_group[uid]]
            setattr(state, status, getattr(state, status) + 1)
        tracker.ready = {group for group in tracker.groups if tracker._short(group)}
        return tracker

    def shard_committed(self, shard_id: int, counts: dict[str, tuple[int, int, int]]) -> None:
        """A shard committed with these (kept, rejected, failed) per group."""
        self._retried(shard_id)
        for group, (kept, rejected, failed) in counts.items():
            state = self.groups[group]
            state.kept, state.rejected, state.failed = (
                state.kept + kept,
                state.rejected + rejected,
                state.failed + failed,
            )
        self._closed(shard_id)

    def shard_failed(self, shard_id: int) -> None:
        """A shard was recorded with every row failed."""
        self._retried(shard_id)
        for group, rows in self.shard_groups.get(shard_id, {}).items():
            self.groups[group].failed += rows
        self._closed(shard_id)

    def rows_for(self, group: str) -> int:
        """How many rows the group's next round gets (0: none)."""
        state, quota = self.groups[group], self.quota
        budget = math.floor(quota.max_factor * state.planned) - state.generated
        if state.kept >= quota.kept or state.rounds >= quota.max_rounds or budget <= 0:
            return 0
        if state.done and state.failed == state.done:
            return 0
        return min(budget, math.ceil((quota.kept - state.kept) / self._yield(state)))

    def _yield(self, state: GroupState) -> float:
        """Kept per row, as the next round plans with it. A group with nothing kept yet is taken to keep
        one row more than it did. Before the last round the estimate is one standard error optimistic:
        a small sample that kept few rows would otherwise order many more rows than needed, and the
        next round tops up what is left with a better estimate; the last round plans at the estimate."""
        if not state.kept:
            return 1 / (state.done + 1)
        share = state.kept / state.done
        if state.rounds + 1 >= self.quota.max_rounds:
            return share
        return min(1.0, share + math.sqrt(share * (1 - share) / state.done))

    def planned_round(self, group: str, rows: int, shards: Counter) -> None:
        """`rows` new rows of `group` were planned, spread over these shards (shard id -> rows)."""
        state = self.groups[group]
        state.rounds += 1
        state.generated += rows
        for shard_id, count in shards.items():
            self.shard_groups.setdefault(shard_id, Counter())[group] += count
            state.open_shards += 1
        self.ready.discard(group)

    def outcomes(self) -> list[GroupOutcome]:
        return [self._outcome(group) for group in sorted(self.groups)]

    def _outcome(self, group: str) -> GroupOutcome:
        state, quota = self.groups[group], self.quota
        reason = None
        if state.kept < quota.kept:
            share = f"{state.kept} kept of {state.done} rows"
            if state.done and state.failed == state.done:
                reason = f"failed rows: all {state.done} of its rows failed"
            elif state.open_shards:
                reason = f"unfinished: {state.open_shards} shard(s) not done yet ({share})"
            elif state.kept == 0:
                reason = f"acceptance too low: {share}"
            elif state.generated >= math.floor(quota.max_factor * state.planned):
                reason = f"max_factor {quota.max_factor:g} reached: {share}"
            else:
                reason = f"max_rounds {quota.max_rounds} reached: {share}"
        return GroupOutcome(group, quota.kept, state.kept, state.generated, state.rounds, reason)

    def _retried(self, shard_id: int) -> None:
        # A retry shard's rows were failed before: their new results replace those.
        if shard_id in self.retry:
            for group, rows in self.shard_groups.get(shard_id, {}).items():
                self.groups[group].failed -= rows

    def _closed(self, shard_id: int) -> None:
        for group in self.shard_groups.get(shard_id, {}):
            state = self.groups[group]
            state.open_shards -= 1
            if self._short(group):
                self.ready.add(group)

    def _short(self, group: str) -> bool:
        return self.groups[group].open_shards == 0 and self.rows_for(group) > 0


def plan_reseeds(store, tracker: QuotaTracker) -> tuple[dict[str, Any], dict[int, int]]:
    """Plan the next round of every ready group as one generation of the run; returns the new run record
    and the new shards (shard id -> rows). Nothing is written when no group is ready."""
    record = read_run_record(store)  # the stored one: the run's hooks record models and pools in it
    ready = sorted(tracker.ready)
    if not ready:
        return record, {}
    quota = tracker.quota
    old, schema = stored_plan(store, record)
    planned = old.filter(
        pc.invert(pc.is_in(old.column("shard_id"), pa.array(sorted(tracker.retry), pa.int32())))
    )
    if QUOTA_ROUND in planned.column_names:
        planned = planned.filter(pc.fill_null(pc.equal(planned.column(QUOTA_ROUND), 0), True))
    groups = pa.array(_group_keys(planned, quota), pa.string())
    parts, counts = [], []
    for group in ready:
        rows = tracker.rows_for(group)
        if rows <= 0:
            continue
        sources = planned.filter(pc.equal(groups, group)).drop_columns(["shard_id"])
        parts.append(reseed_rows(sources, tracker.groups[group].rounds + 1, rows))
        counts.append((group, rows))
    if not parts:
        tracker.ready.clear()
        return record, {}
    new = pa.concat_tables(parts)
    latest = generations(record)[-1]
    generation = {
        "manifest": latest["manifest"],
        "plan_fingerprint": latest["plan_fingerprint"],  # the manifest's plan: a plain rerun resumes
        "quota": {"groups": len(counts)},
    }
    first = len(shard_sizes(record))
    shard_size = latest["shard_size"]
    new = new.add_column(0, "shard_id", pa.nulls(new.num_rows, pa.int32()))  # add_generation numbers them
    updated = add_generation(store, record, old, schema, new, generation, shard_size)
    offset = 0
    for group, rows in counts:
        spread = Counter(first + (offset + i) // shard_size for i in range(rows))
        tracker.planned_round(group, rows, spread)
        offset += rows
    added = updated["generations"][-1]
    log.info(
        "quota: %d new rows for %d group(s) in shards %d-%d",
        added["rows"],
        len(counts),
        added["first_shard"],
        added["first_shard"] + added["shards"] - 1,
    )
    sizes = shard_sizes(updated)
    return updated, {s: sizes[s] for s in range(first, first + added["shards"])}


def _group_keys(rows: pa.Table, quota: QuotaSection) -> list[str]:
    return [quota.group_key(value) for value in rows.column(quota.per).to_pylist()]
