"""The Ray cluster a run uses: connecting to one or starting a local one, and what its machines have.

`start_ray` connects to a cluster (`--address` / RAY_ADDRESS, code shipped with a runtime_env) or
starts a local instance whose GPUs are logical on a CPU machine (`detect_gpus` counts the real ones),
so one code path runs everywhere. `node_alive` tells a lost node (preemption) from a live one.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import ray
from ray.exceptions import RayError

from actors.pool import PoolError
from actors.ray_errors import first_line


def project_packages() -> list[Path]:
    """The three packages to ship to a remote cluster."""
    import actors
    import manifests
    import pipeline

    return [Path(module.__file__).parent for module in (manifests, pipeline, actors)]


def start_ray(address: str | None, num_gpus: float | None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or RAY_ADDRESS), or start a local instance. True when this call did it,
    so the caller shuts down only what it started; an already-initialized Ray is reused."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        modules = [str(p) for p in project_packages()]
        try:
            ray.init(address=address, runtime_env={"py_modules": modules}, **common)
        except (ConnectionError, RuntimeError, RayError) as error:
            raise PoolError(connection_failure(address, error)) from None
    else:
        # "local": a fresh instance of our own. A bare ray.init() would attach to the latest cluster
        # anyone started on this machine with `ray start` (Ray reads its address from the temp folder).
        ray.init(address="local", num_gpus=num_gpus, num_cpus=num_cpus, **common)
    return True


def connection_failure(address: str, error: BaseException) -> str:
    """One line for a failed connection, with the token hint when the cluster refused us for want of one."""
    from ray.exceptions import AuthenticationError

    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return (
            f"the Ray cluster at {address} requires an authentication token: set RAY_AUTH_MODE=token and "
            "the cluster's token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH)"
        )
    return f"cannot connect to the Ray cluster at {address}: {first_line(error)}"


def detect_gpus() -> int:
    """CUDA devices on this machine; without an NVIDIA driver, 0 (and no torch import, which is slow)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def node_alive(node_id: str | None) -> bool:
    """Whether the Ray node is still in the cluster (True when unknown: then the usual blame applies)."""
    if not node_id:
        return True
    return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())
