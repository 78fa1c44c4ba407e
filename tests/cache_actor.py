"""A stand-in for one GPU actor process copying a staged model, for test_model_cache. Its own module so a
spawned process imports only this (and boto3), not the test module's torch and models."""

from __future__ import annotations

from pipeline.models.cache import local_copy
from pipeline.storage.s3_config import S3Config, s3_client


def count_gets() -> list[str]:
    """Keys of the GetObject calls this process's S3 client makes from now on (the client that
    pipeline.storage shares per process and config, so model_cache's downloads are counted)."""
    keys: list[str] = []
    client = s3_client(S3Config.from_env())
    client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: keys.append(params["Key"])
    )
    return keys


def copy_like_an_actor(uri: str, cache_dir: str, barrier, results) -> None:
    """Wait for the other actor, copy the staged folder, report (path, GETs made)."""
    try:
        gets = count_gets()
        barrier.wait()
        path = local_copy(uri, cache_dir)
        results.put((str(path), len(gets)))
    except BaseException as error:  # reported, so the test fails with it instead of waiting
        results.put((repr(error), -1))
        raise
