"""Scalars panel: every scalar tag of the selected runs overlaid, min/max-bucketed in SQLite, zoomable.

The first view of a million-point series is the store's bucket summary (``RunReader.scalar_window``,
about 0.3 s, then cached until the run changes);
zooming asks again for the visible step range, which comes whole once it holds at most ``points``
points. Nothing is dropped silently: each answer says how many points the range holds.
"""

from __future__ import annotations

from typing import Any

from deepscope.server._cache import RunCache
from deepscope.server._figures import json_floats
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["DEFAULT_POINTS", "MAX_POINTS", "PANEL", "series_impl", "tags_impl"]

DEFAULT_POINTS = 2000
MAX_POINTS = 20_000
_WINDOWS = RunCache(256)  # bucketed views (at most MAX_POINTS points each) of unchanged runs: tag switches are instant


def tags_impl(reader: RunReader) -> dict[str, Any]:
    """``{"tags": [...]}``: the run's sorted scalar tags."""
    return {"tags": reader.scalar_tags()}


def series_impl(
    reader: RunReader,
    *,
    tag: str,
    points: int = DEFAULT_POINTS,
    start: int | None = None,
    end: int | None = None,
) -> dict[str, Any]:
    """One scalar series within ``[start, end]``, about ``points`` points (``RunReader.scalar_window``).

    Returns:
        ``{"tag", "steps", "values", "total", "downsampled"}``: ``total`` counts the points in the
        range; NaN and inf values are ``None`` (a gap in the curve).

    Raises:
        UnknownNameError: the run has no scalar ``tag`` (the message lists close tags).
        ValueError: ``points`` is outside 4..``MAX_POINTS`` or ``start > end``.
    """
    if not 4 <= points <= MAX_POINTS:
        raise ValueError(f"points must be between 4 and {MAX_POINTS}, got {points}")
    window = _WINDOWS.get(
        reader, (tag, points, start, end), lambda: reader.scalar_window(tag, start=start, end=end, max_points=points)
    )
    series, total = window
    return {
        "tag": tag,
        "steps": series.steps.tolist(),
        "values": json_floats(series.values),
        "total": total,
        "downsampled": len(series) < total,
    }


PANEL = Panel(
    name="scalars",
    title="Scalars",
    available=lambda reader: bool(reader.scalar_tags()),
    routes=(Route("tags", tags_impl), Route("series", series_impl)),
    compare=True,
)
