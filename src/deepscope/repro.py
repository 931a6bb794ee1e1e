"""Reproducibility helpers: what produced a run (library versions, platform)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

__all__ = ["library_versions"]

_LIBRARIES = ("deepscope", "torch", "torchvision", "numpy")


def library_versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results, for provenance."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
