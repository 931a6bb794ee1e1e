"""Read back a stored value-distribution summary: ``[low, high, counts × bins, quantiles]`` (numpy only).

The Recorder writes these vectors (:func:`deepscope._distributions.summarise`, on the device); the
TensorBoard export and the dashboard read them without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["QUANTILES", "Distribution", "split_summary"]

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


@dataclass(frozen=True)
class Distribution:
    """One summary read back from a run: bucket edges ``(bins + 1,)``, counts ``(bins,)`` and quantiles."""

    edges: np.ndarray
    counts: np.ndarray
    quantiles: dict[float, float]

    @property
    def total(self) -> int:
        """Number of finite values summarised."""
        return int(self.counts.sum())


def split_summary(summary: np.ndarray, levels: Sequence[float] = QUANTILES) -> Distribution | None:
    """Unpack a stored summary vector whose quantiles are at ``levels``.

    None when it holds no bucket or no finite value (all NaN: not measured, e.g. a layer without weights).
    """
    bins = len(summary) - 2 - len(levels)
    low, high = float(summary[0]), float(summary[1])
    if bins < 1 or not (np.isfinite(low) and np.isfinite(high)):
        return None
    counts = np.asarray(summary[2 : 2 + bins], dtype=np.float64)
    quantiles = dict(zip(levels, map(float, summary[2 + bins :]), strict=True))
    return Distribution(np.linspace(low, high, bins + 1), counts, quantiles)
