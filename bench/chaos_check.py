"""The end of a chaos round, checked without the code under test where it can be: the shard tars read with
webdataset, the shard parquets with pyarrow, the tars compared byte for byte with an undisturbed run's,
and the counts `stylegen status --json` prints and `stylegen report` writes compared with the plan.

A row counts once however many views miss it: `lost` is the most planned rows any one view lacks
(tars, parquets, status, report), `duplicated` the most extra rows any one view holds (a second copy of
a uid, a uid the plan does not have, a count above the plan).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    tars_checked: int = 0
    tars_differing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.tars_differing or self.problems)

    def view(self, name: str, planned: set[str], seen: Counter) -> None:
        missing = planned - seen.keys()
        extra = sum(count - 1 for count in seen.values() if count > 1)
        extra += sum(count for uid, count in seen.items() if uid not in planned)
        self.count(name, len(missing), extra, sorted(missing)[:3])

    def count(self, name: str, missing: int, extra: int, examples: list[str] | None = None) -> None:
        self.lost, self.duplicated = max(self.lost, missing), max(self.duplicated, extra)
        if missing or extra:
            shown = f" (e.g. {', '.join(examples)})" if examples else ""
            self.problems.append(f"{name}: {missing} planned rows missing{shown}, {extra} extra")


def check_output(
    folder: Path, planned: list[str], reference: dict[str, bytes], status: dict, report_html: str
) -> Verdict:
    """`folder` holds the output's `shards/*.tar` and `metadata/*.parquet` (an S3 output downloaded);
    `reference` the undisturbed run's tars by name, exactly the shards the plan has."""
    verdict, wanted = Verdict(), set(planned)
    tars = sorted((folder / "shards").glob("*.tar"))
    keys = Counter(sample["__key__"] for sample in wds.WebDataset([str(p) for p in tars], shardshuffle=False))
    verdict.view("tars", wanted, keys)
    uids = Counter()
    for path in sorted((folder / "metadata").glob("shard-*.parquet")):
        uids.update(pq.read_table(path, columns=["uid"]).column("uid").to_pylist())
    verdict.view("parquets", wanted, uids)

    names = {path.name for path in tars}
    for name in sorted(names | reference.keys()):
        verdict.tars_checked += 1
        if (
            name not in names
            or name not in reference
            or (folder / "shards" / name).read_bytes() != reference[name]
        ):
            verdict.tars_differing.append(name)

    samples = status.get("samples", {})
    for name, value in (("status kept", samples.get("kept")), ("status rows", status.get("rows_committed"))):
        value = int(value or 0)
        verdict.count(name, max(0, len(wanted) - value), max(0, value - len(wanted)))
    if not status.get("complete"):
        verdict.problems.append(f"status: not complete ({json.dumps(status, sort_keys=True)})")
    for field_name in ("kept", "rows"):
        value = report_count(report_html, field_name)
        verdict.count(f"report {field_name}", max(0, len(wanted) - value), max(0, value - len(wanted)))
    for name, value in (
        ("status failed", samples.get("failed")),
        ("report failed", report_count(report_html, "failed")),
    ):
        if int(value or 0):
            verdict.problems.append(f"{name}: {value} (no row fails in the soak)")
    return verdict


def report_count(html: str, status: str) -> int:
    """A count of the report's sample table (`<td class="count" data-status="kept">12</td>`)."""
    match = re.search(rf'<td class="count" data-status="{status}">(\d+)</td>', html)
    return int(match[1]) if match else -1
