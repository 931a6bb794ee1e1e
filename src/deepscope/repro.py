"""Reproducibility helpers: what produced a run (library versions, platform)."""

from __future__ import annotations

import functools
import platform
import sys
from importlib import metadata

__all__ = ["library_versions"]

_LIBRARIES = ("deepscope", "torch", "torchvision", "numpy")


def library_versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results, for provenance."""
    return dict(_library_versions())


@functools.cache  # reading package metadata costs milliseconds, and it cannot change in a process
def _library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
