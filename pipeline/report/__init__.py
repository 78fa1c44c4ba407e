"""`stylegen report`: one self-contained report.html for an output (see pipeline.report.build).

- `data`: reads run.json, the commit markers and the shard parquets into a ReportData;
- `gallery`: chooses and loads the thumbnails (reference, samples, content) as data: URIs;
- `charts`: inline SVG histograms and the throughput chart;
- `page`: the HTML;
- `build`: `build_report(store) -> str` and `write_report(output_uri, destination=None) -> str`.

Importing this package is cheap: numpy, pyarrow and PIL load when a report is built.
"""


def write_report(output_uri: str, destination: str | None = None, **options) -> str:
    """Build the report of `output_uri` and write it (see pipeline.report.build.write_report)."""
    from pipeline.report.build import write_report as write

    return write(output_uri, destination, **options)
