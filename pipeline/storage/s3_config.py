"""S3 options (S3Config: defaults < STYLEGEN_S3_* environment < run config < explicit options) and the
one boto3 client per process and endpoint. No credential is accepted as an option."""

from __future__ import annotations

import os
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIB = 1024 * 1024
ENV_PREFIX = "STYLEGEN_S3_"
_SECRET_WORDS = ("secret", "password", "token", "access_key", "credential", "session")


def looks_like_credential(option: Any) -> bool:
    """Whether an option name reads like a credential (those come only from the standard AWS chain)."""
    return any(word in str(option).lower() for word in _SECRET_WORDS)


class S3Config(BaseModel):
    """S3 options: defaults < STYLEGEN_S3_<FIELD> environment variables < run config < explicit options.

    The endpoint may also come from AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, which boto3 reads itself."""

    # hide_input_in_errors: a mistaken credential in a config must not be echoed in the error.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO; None = boto3's resolution
    region: str | None = None
    addressing_style: Literal["auto", "virtual", "path"] = "auto"  # path for most self-hosted servers
    max_attempts: int = Field(10, ge=1)  # per request, adaptive retry mode
    max_pool_connections: int = Field(32, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    multipart_threshold_mib: int = Field(64, ge=5)
    multipart_chunksize_mib: int = Field(16, ge=5)  # S3 parts are at least 5 MiB
    max_concurrency: int = Field(8, ge=1)  # parts in flight per upload
    # True: the marker is created with If-None-Match: * (AWS S3 since 2024, MinIO, SeaweedFS, R2).
    # False: HEAD-then-PUT-then-read-back for stores without conditional writes. Race: two attempts
    # that both HEAD before either PUTs, and whose read-backs both come before the other's PUT, both
    # believe they won; the marker then names the later one while both publish.
    conditional_writes: bool = True
    # head: HEAD checks size and the sha256 stored with the object (bytes in flight are protected by
    # botocore's per-request checksums); read: also download and hash every uploaded object.
    verify: Literal["head", "read"] = "head"

    @model_validator(mode="before")
    @classmethod
    def _refuse_credentials(cls, data: Any) -> Any:
        for key in data if isinstance(data, dict) else ():
            if looks_like_credential(key):
                raise ValueError(
                    f"S3 option {key!r} looks like a credential; credentials come only from the standard "
                    "AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role)"
                )
        return data

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **options: Any) -> S3Config:
        """Options from STYLEGEN_S3_* variables (e.g. STYLEGEN_S3_ADDRESSING_STYLE=path), then `options`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, value in environ.items():
            if name.startswith(ENV_PREFIX):
                field = name[len(ENV_PREFIX) :].lower()
                if field not in cls.model_fields:
                    raise ValueError(f"unknown S3 option in environment variable {name}")
                values[field] = value
        return cls.model_validate({**values, **options})

    def transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold_mib * MIB,
            multipart_chunksize=self.multipart_chunksize_mib * MIB,
            max_concurrency=self.max_concurrency,
            use_threads=True,
        )


# --- one client per process -------------------------------------------------------------------------

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()
# Environment variables that change which endpoint or identity a new client gets. The access key id
# (not the secret) is part of the cache key so a process that switches identity gets a fresh client.
_IDENTITY_ENV = ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def s3_client(config: S3Config):
    """The process's boto3 S3 client for `config` (boto3 clients are thread-safe; sessions are not,
    so each new client gets its own session). A forked child builds its own."""
    identity = tuple(os.environ.get(name) for name in _IDENTITY_ENV)
    cache_key = (os.getpid(), config, identity)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            import boto3
            from botocore.config import Config

            botocore_config = Config(
                region_name=config.region,
                retries={"mode": "adaptive", "total_max_attempts": config.max_attempts},
                max_pool_connections=config.max_pool_connections,
                connect_timeout=config.connect_timeout_s,
                read_timeout=config.read_timeout_s,
                s3={"addressing_style": config.addressing_style},
                user_agent_extra="stylegen",
            )
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=config.endpoint_url, config=botocore_config)
            _clients[cache_key] = client
        return client
