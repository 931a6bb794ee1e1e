"""Min/max bucket downsampling of a scalar series, so a plot of a million points keeps every spike."""

from __future__ import annotations

import numpy as np

from deepscope.store import _downsample_index

__all__ = ["minmax_indices"]


def minmax_indices(values: np.ndarray, points: int) -> np.ndarray:
    """Indices (ascending) of at most ``points`` rows of ``values`` that keep its shape.

    The first and last rows are kept; the rows between are split into ``(points - 2) // 2``
    contiguous buckets and each bucket keeps its lowest and highest value, so the global min and
    max (and every spike wider than nothing) survive. A series of at most ``points`` rows is
    returned whole. This is the run store's own algorithm (``RunReader.scalars(max_points=...)``),
    applied here to a slice, so the full view and a zoomed range are downsampled the same way.

    Args:
        values: the series' values in step order, shape ``(n,)``.
        points: the most rows to keep (at least 4: first, last, min and max).

    Raises:
        ValueError: ``points`` is below 4 or ``values`` is not one-dimensional.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {values.shape}")
    if points < 4:
        raise ValueError(f"points must be >= 4 (first, last, min and max points), got {points}")
    if len(values) <= points:
        return np.arange(len(values), dtype=np.int64)
    return _downsample_index(values, points)
