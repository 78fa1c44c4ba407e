"""Shared fixtures for the RB-Modulation tests: the tiny preset, built once per test session.

Register them in a test module with `pytest_plugins = ["rbmod_fixtures"]` (pytest puts tests/ on
sys.path, as tests/ has a conftest.py and no __init__.py).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory):
    """A private cache folder holding the tiny preset's weights (built on first use)."""
    from pipeline.models.tiny import ensure_tiny_cache

    cache = tmp_path_factory.mktemp("stylegen-cache")
    ensure_tiny_cache(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_models(tiny_cache_dir):
    """`load_preset("tiny")` on CPU. Shared by the whole session: treat it as read-only."""
    from pipeline.models.loading import load_preset

    return load_preset("tiny", device="cpu", cache_dir=tiny_cache_dir)


@pytest.fixture
def torch_single_thread():
    """Run a test with one intra-op thread, then restore. Tiny models gain nothing from threads, and on a
    shared, oversubscribed CPU two spinning OpenMP threads made decode 10-40x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
