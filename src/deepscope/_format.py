"""How a score appears in a table, the same in the terminal, the report and Jupyter."""

from __future__ import annotations

import math

__all__ = ["cell"]


def cell(value: object) -> str:
    """Floats to 3 decimals (``n/a`` for NaN: no score for that sample), ``—`` for a missing value."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return "—" if value is None else str(value)
