"""`--config` and `--endpoint-url` for the commands that read an output (status, report, select, dedup,
card): they reach the storage the run used, with the same `storage` settings (endpoint, addressing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipeline.errors import UsageError

CONFIG_OPTION = typer.Option(
    None,
    "--config",
    help="The run config (YAML) whose `storage` section (endpoint, addressing style) reaches the output.",
)
ENDPOINT_OPTION = typer.Option(
    None,
    "--endpoint-url",
    help="The S3 endpoint of an s3:// output (e.g. http://127.0.0.1:8333); overrides --config's.",
)


def storage_options(uris: list[str], config: Path | None, endpoint_url: str | None) -> dict[str, Any]:
    """The open_store options for `uris` (the outputs a command reads or writes): the run config's
    `storage` section, then `--endpoint-url`. Local outputs take none (a run config's storage section
    is for its S3 outputs); `--endpoint-url` with no s3:// output is a mistake, said as one."""
    s3 = any(str(uri).startswith("s3://") for uri in uris)
    if endpoint_url and not s3:
        raise UsageError(f"--endpoint-url {endpoint_url}: applies to s3:// outputs, not {', '.join(uris)}")
    if not s3:
        return {}
    options: dict[str, Any] = {}
    if config is not None:
        from pipeline.run_config import RunConfig

        options.update(RunConfig.load(config).storage)
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options
