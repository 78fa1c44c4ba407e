"""Starting Ray: a local run gets an instance of its own, whatever else runs on the machine."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def test_a_local_run_starts_its_own_ray_even_when_another_cluster_was_started_on_the_machine(
    no_shared_ray, monkeypatch
):
    """`ray start` elsewhere on the machine records its address as "the latest cluster"; a bare
    ray.init() would attach to it (and refuse our logical GPUs). stylegen starts its own instance."""
    import ray
    from ray._common.utils import get_ray_address_file

    from actors.cluster import start_ray

    # Where Ray looks for "the latest cluster"; short, since Ray puts unix sockets below it.
    tmp_path = Path(tempfile.mkdtemp(prefix="sg-"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address_file = Path(get_ray_address_file(None))
    assert address_file.parent == tmp_path / "ray"
    address_file.parent.mkdir()
    address_file.write_text("127.0.0.1:9")  # a cluster someone else started (now gone)
    assert start_ray(None, num_gpus=3)
    try:
        assert ray.cluster_resources().get("GPU") == 3
    finally:
        ray.shutdown()
        shutil.rmtree(tmp_path, ignore_errors=True)
