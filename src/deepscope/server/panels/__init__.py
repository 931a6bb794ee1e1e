"""The dashboard's panels: each a plugin with a name, a title, an availability test and its data routes.

A panel module defines ``PANEL = Panel(...)``; its routes are plain functions ``impl(reader, **query)``
returning JSON-ready dicts, served at ``GET /api/<panel>/<route>?run=<run id>&<query>`` (the query
parameters are the impl's keyword arguments, typed by its annotations), and unit-tested without
HTTP. Its front end is ``static/panels/<name>.js``, an ES module exporting ``render(container, ctx)``.
``PANEL_MODULES`` gives the order of the tabs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from deepscope.store import RunReader

__all__ = ["PANEL_MODULES", "Panel", "Route", "panels"]

PANEL_MODULES = (
    "scalars",
    "health",
    "representation",
    "attributions",
    "evaluation",
    "explanations",
    "findings",
    "layers",
    "featurevis",
    "attention",
    "footprint",
)


@dataclass(frozen=True)
class Route:
    """One data route of a panel: ``GET /api/<panel>/<path>``, answered by ``impl(reader, **query)``."""

    path: str
    impl: Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Panel:
    """A dashboard tab.

    Attributes:
        name: the URL segment and the front-end module ``static/panels/<name>.js``.
        title: the tab's label.
        available: whether a run holds anything this panel shows (tabs without data are hidden).
        routes: the panel's data routes.
        compare: the panel overlays every selected run (``ctx.runs``) instead of showing the focused one.
    """

    name: str
    title: str
    available: Callable[[RunReader], bool]
    routes: tuple[Route, ...]
    compare: bool = False


@cache
def panels() -> tuple[Panel, ...]:
    """Every registered panel, in tab order."""
    return tuple(importlib.import_module(f"{__name__}.{name}").PANEL for name in PANEL_MODULES)
