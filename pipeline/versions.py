"""The versions a run records (run.json, every sample's json): stylegen and the packages that shape images."""

from __future__ import annotations

from importlib import metadata

VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "stylegen")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = _source_version() if name == "stylegen" else "not installed"
    return versions


def _source_version() -> str:
    import pipeline

    return pipeline.__version__
