"""The report's quota section: each group's target, kept count, rows and rounds, short groups first with
the reason (from the latest run's summary, `quota`; pipeline/run/quota.py)."""

from __future__ import annotations

from html import escape
from typing import Any


def quota_section(summary: dict[str, Any] | None, run: dict[str, Any] | None, limit: int = 1000) -> str:
    groups = (summary or {}).get("quota")
    if not groups:
        return ""
    per = ((run or {}).get("config") or {}).get("quota", {}).get("per", "group")
    ordered = sorted(groups, key=lambda group: (group["reason"] is None, group["group"]))
    short = sum(1 for group in groups if group["reason"])
    rows = "".join(
        f'<tr data-group="{escape(group["group"])}"><td class="path">{escape(group["group"])}</td>'
        f'<td class="count">{group["target"]}</td><td class="count" data-field="kept">{group["kept"]}</td>'
        f'<td class="count">{group["rows"]}</td><td class="count">{group["rounds"]}</td>'
        f"<td>{escape(group['reason'] or 'reached')}</td></tr>"
        for group in ordered[:limit]
    )
    more = f'<p class="meta">{len(groups) - limit} more groups not listed.</p>' if len(groups) > limit else ""
    return (
        f"<h2>Quota</h2><p>{len(groups) - short} of {len(groups)} groups by {escape(per)} reached "
        f"{groups[0]['target']} kept samples; {short} stayed short.</p>"
        f'<table id="quota"><tr><th>{escape(per)}</th><th>target</th><th>kept</th><th>rows</th>'
        f"<th>rounds</th><th>status</th></tr>{rows}</table>{more}"
    )
