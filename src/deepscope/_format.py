"""How a score appears in a table, the same in the terminal, the report and Jupyter."""

from __future__ import annotations

import math

__all__ = ["cell"]


def cell(value: object) -> str:
    """Floats to 3 decimals, or 3 significant digits below 0.001 so evidence like 7.8e-07 never reads 0.000.

    ``n/a`` for NaN (no score for that sample), ``—`` for a missing value.
    """
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return "—" if value is None else str(value)
