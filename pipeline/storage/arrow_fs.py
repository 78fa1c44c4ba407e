"""A store as a pyarrow filesystem, for readers that scan many of its objects in Arrow's own threads
(the report reads 10^6 shard parquets as one dataset: no Python, no boto3 call per file).

S3 goes through pyarrow's S3FileSystem (the AWS C++ SDK) with the store's own reach: its endpoint after
boto3's resolution (run config, --endpoint-url, AWS_ENDPOINT_URL), its region, addressing style, retries
and timeouts, and the credentials boto3's standard chain resolves (environment, profile, SSO, instance
role), handed over as they are at the time of the call. None for a store Arrow cannot read directly:
the caller reads through the store.
"""

from __future__ import annotations

import pyarrow.fs as pa_fs

from pipeline.storage.local import LocalStore
from pipeline.storage.s3 import S3Store


def arrow_filesystem(store) -> tuple[pa_fs.FileSystem, str] | None:
    """(filesystem, the path of the store's root in it), or None for a store of another kind. An
    object's path is the root, "/", its key."""
    if isinstance(store, LocalStore):
        return pa_fs.LocalFileSystem(), str(store.root)
    if isinstance(store, S3Store):
        root = f"{store.bucket}/{store.prefix}" if store.prefix else store.bucket
        return _s3_filesystem(store), root
    return None


def _s3_filesystem(store: S3Store) -> pa_fs.S3FileSystem:
    import boto3

    config = store.config
    credentials = boto3.session.Session().get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials is not None else None
    scheme, _, endpoint = store.endpoint_url.partition("://")
    return pa_fs.S3FileSystem(
        access_key=frozen.access_key if frozen else None,
        secret_key=frozen.secret_key if frozen else None,
        session_token=frozen.token if frozen else None,
        anonymous=frozen is None,
        region=store.region,
        endpoint_override=endpoint,
        scheme=scheme,
        force_virtual_addressing=_virtual_addressing(config.addressing_style, endpoint),
        connect_timeout=config.connect_timeout_s,
        request_timeout=config.read_timeout_s,
        retry_strategy=pa_fs.AwsStandardS3RetryStrategy(max_attempts=config.max_attempts),
    )


def _virtual_addressing(style: str, endpoint: str) -> bool:
    """As boto3 addresses: "auto" is virtual on AWS, path on a self-hosted endpoint."""
    host = endpoint.split("/", 1)[0].split(":", 1)[0]
    return style == "virtual" or (style == "auto" and host.endswith(".amazonaws.com"))
