"""The versions a run records (run.json, every sample's json): stylegen and the packages that shape images."""

from __future__ import annotations

import platform
from importlib import metadata

VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "stylegen")
RUN_PACKAGES = ("ray", "pyarrow", "webdataset")  # the run's machinery: in run.json, not in the samples


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = _source_version() if name == "stylegen" else "not installed"
    return versions


def run_versions() -> dict[str, str]:
    """Everything run.json's `versions` holds: the packages that shape images, Python, and the run's own."""
    return {
        **package_versions(),
        "python": platform.python_version(),
        **{name: metadata.version(name) for name in RUN_PACKAGES},
    }


def _source_version() -> str:
    import pipeline

    return pipeline.__version__
