"""`stylegen report`: one self-contained report.html for an output (see pipeline.report.build).

- `data`: reads run.json, the commit markers and the shard parquets into a ReportData;
- `gallery`: chooses and loads the thumbnails (reference, samples, content) as data: URIs;
- `charts`: inline SVG histograms and the throughput chart;
- `page`: the HTML;
- `build`: `build_report(store) -> str`, `store_report(store)` and `write_report(output_uri, destination)`.

Importing this package is cheap: numpy, pyarrow and PIL load when a report is built.
"""
