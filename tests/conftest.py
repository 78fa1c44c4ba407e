"""Suite-wide settings: no model hub, ever (a stray hub id would otherwise spend minutes in DNS retries
and can silently return an empty tokenizer); `ray_cluster`, the local Ray the suite shares, whose modules
run one after another; `no_shared_ray` for a test that needs Ray down."""

import os
import sys

import pytest

# Registered here, before any test module imports it, so pytest rewrites its asserts too.
pytest_plugins = ["s3_fixtures"]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def pytest_collection_modifyitems(items):
    """The modules that use the shared local Ray run last, one after another, so it starts once (see
    run_fixtures.local_ray); the order within a module, and of the other modules, stays as collected."""
    on_shared_ray = {item.path for item in items if "ray_cluster" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: item.path in on_shared_ray)


def pytest_sessionfinish(session):
    if "run_fixtures" in sys.modules:
        sys.modules["run_fixtures"].stop_shared_ray()
    if "pyarrow.fs" in sys.modules:
        # The AWS SDK under pyarrow's S3FileSystem (the report's reads) must be shut down while the
        # interpreter is whole: left to the exit, it crashes the process now and then (apache/arrow#38352).
        import gc

        gc.collect()
        sys.modules["pyarrow.fs"].finalize_s3()


@pytest.fixture(scope="module")
def ray_cluster():
    """The suite's shared local Ray with 4 logical GPUs (the `ray` module), started on first use."""
    from run_fixtures import local_ray

    yield from local_ray()


@pytest.fixture
def no_shared_ray():
    """Ray down in this process (a test that starts a cluster of its own or a run whose actors must
    inherit the environment it sets)."""
    from run_fixtures import stop_shared_ray

    stop_shared_ray()
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized(), "another test left Ray initialized in this process"
