"""Built-in demos: each trains small models on data generated or shipped offline and writes a report.

Demos register themselves in :data:`deepscope.registry.DEMOS`; ``deepscope demo NAME`` runs one.
"""

from __future__ import annotations

from deepscope.demos import toy2d
from deepscope.demos.toy2d import DemoResult

__all__ = ["DEFAULT_DEMO", "DemoResult", "toy2d"]

DEFAULT_DEMO = "toy2d"
