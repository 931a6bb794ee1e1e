"""Attribution: explain a prediction with any classic method, and measure how faithful the map is.

``explain(model, inputs, method, target=None, layer=None, **params)`` returns an
:class:`AttributionMap`. Methods live in :data:`ATTRIBUTIONS`, filled by the family modules
imported here.
"""

from __future__ import annotations

# The family modules register their methods; this import order is the registry's, and every table's, order.
from deepscope.attribution import gradient, smoothgrad, backprop_rules, cam, perturbation  # noqa: F401  # isort: skip
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, explain
from deepscope.attribution.compare import Comparison, compare
from deepscope.attribution.result import AttributionMap
from deepscope.attribution.smoothgrad import smooth

__all__ = ["ATTRIBUTIONS", "Attribution", "AttributionMap", "Comparison", "compare", "explain", "smooth"]
