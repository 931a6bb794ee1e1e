"""The file layout of a folder written by :func:`deepscope.explain_dataset`, shared by its writer and its readers.

Torch-free (numpy only), so the report and the dashboard read the folder without loading torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["MANIFEST", "SHARD_FILE", "SUMMARY", "class_label", "scaled_magnitude", "shard_file"]

MANIFEST = "explanations.json"  # the shards, the failed shards, the method and its parameters, the versions
SUMMARY = "summary.npz"  # per explained class: its count and its mean scaled map
SHARD_FILE = re.compile(r"shard-\d{5}\.npz")  # the only names a shard file has


def shard_file(index: int) -> str:
    """The file name of shard ``index``."""
    return f"shard-{index:05d}.npz"


def scaled_magnitude(maps: np.ndarray) -> np.ndarray:
    """Each map of ``(N, ...)`` as ``|m|`` min–max scaled to [0, 1] (an all-equal map gives 0).

    One scale for offset maps (RISE's) and signed ones (gradients): what the class means and the
    recorded examples show.
    """
    magnitude = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1)
    low, high = magnitude.min(1, keepdims=True), magnitude.max(1, keepdims=True)
    return ((magnitude - low) / np.maximum(high - low, 1e-30)).reshape(np.shape(maps))


def class_label(k: int, names: Sequence[str] | None) -> str:
    """How an explained class is shown: its name, ``class k`` without names, ``custom target`` for -1."""
    if k == -1:
        return "custom target"
    return str(names[k]) if names is not None and k < len(names) else f"class {k}"
