"""Build an output's report.html (`build_report`) and write it (`write_report`): what `stylegen report`
and the end of `stylegen run` call."""

from __future__ import annotations

from pathlib import Path

from pipeline.output.run_record import require_stylegen_output
from pipeline.storage.layout import REPORT_KEY


def build_report(
    store,
    *,
    per_style: int = 8,
    max_styles: int = 30,
    max_failed: int = 50,
    size: int = 128,
    extremes: int = 4,
    latest_run: dict | None = None,
) -> str:
    """The report of the output in `store` as one HTML string (see pipeline.report). `latest_run`: the
    summary of the run that just finished (else summary.json is read)."""
    from pipeline.report.data import gather
    from pipeline.report.gallery import build_galleries
    from pipeline.report.page import render

    data = gather(store, max_failed=max_failed, latest_run=latest_run)
    galleries = build_galleries(
        store, data, per_style=per_style, max_styles=max_styles, size=size, extremes=extremes
    )
    return render(data, galleries)


def write_report(
    output_uri: str, destination: str | Path | None = None, storage: dict | None = None, **options
) -> str:
    """Build the report of `output_uri` (a folder or s3://bucket/prefix) and write it to `destination`
    (a local file) or, by default, to `report.html` in the output through its store. Returns where it
    went (the file path, or the store's URL of report.html). `storage`: open_store options (endpoint,
    addressing); `options`: see build_report."""
    from pipeline.storage import open_store

    store = open_store(output_uri, **(storage or {}))
    if destination is None:
        return store_report(store, **options)
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_report(store, **options).encode("utf-8"))
    return str(path)


def store_report(store, **options) -> str:
    """Build the report of the output in `store` and write it there as report.html (only into a stylegen
    output); returns its URL."""
    require_stylegen_output(store)
    store.put_bytes(REPORT_KEY, build_report(store, **options).encode("utf-8"))
    return store.url(REPORT_KEY)
