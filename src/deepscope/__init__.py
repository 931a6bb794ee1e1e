"""deepscope: see inside PyTorch neural networks, while they train and after.

Importing the package is cheap: sub-modules (and torch) load on first use of a name, so the
report and the run store work on machines without torch.

Example:
    >>> import deepscope as ds
    >>> ds.__version__  # doctest: +SKIP
    '0.1.0'
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("deepscope")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it (loaded lazily, STYLE principle 15)
_EXPORTS = {
    "Recorder": "deepscope.recorder",
    "doctor": "deepscope.diagnostics",
    "filters": "deepscope.filter_bank",
    "activations": "deepscope.layer_stats",
    "top_activations": "deepscope.layer_stats",
    "deconv_project": "deepscope.deconv",
    "occlusion_study": "deepscope.occlusion",
    "invariance": "deepscope.robustness",
    "inspect_layers": "deepscope.inspection",
    "receptive_field": "deepscope.receptive",
    "FeatureEvolution": "deepscope.probes",
    "Finding": "deepscope.diagnostics",
    "evaluate": "deepscope.evaluation",
    "explain_dataset": "deepscope.scale",
    "feature_vis": "deepscope.featurevis",
    "feature_vis_grid": "deepscope.featurevis",
    "Evaluation": "deepscope.evaluation",
    "explain": "deepscope.attribution",
    "explain_text": "deepscope.text",
    "TokenAttribution": "deepscope.text",
    "compare": "deepscope.attribution",
    "AttributionMap": "deepscope.attribution",
    "ATTRIBUTIONS": "deepscope.attribution",
    "smooth": "deepscope.attribution",
    "list_layers": "deepscope.layers",
    "resolve_layer": "deepscope.layers",
    "LayerInfo": "deepscope.layers",
    "preserved": "deepscope.guard",
    "HookSet": "deepscope.hooks",
    "RunReader": "deepscope.store",
    "RunWriter": "deepscope.store",
    "build_report": "deepscope.report",
    "DeepscopeError": "deepscope.errors",
    "LayerNotFoundError": "deepscope.errors",
}

# sub-packages reachable as attributes, e.g. ``ds.attribution.smooth``, ``ds.datasets.shapes``
_SUBMODULES = (
    "attention",
    "attribution",
    "datasets",
    "demos",
    "diagnostics",
    "evaluation",
    "featurevis",
    "footprint",
    "plots",
    "probes",
    "report",
    "repro",
    "scale",
    "store",
)

__all__ = ["__version__", *sorted(_EXPORTS), *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"deepscope.{name}")
    raise AttributeError(f"module 'deepscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
