"""Dataset-wide analyses at scale: the same calls in this process or on a Ray cluster, with exact merges.

``backend="local"`` (the default of :func:`deepscope.evaluate`, :func:`deepscope.activations`,
:func:`deepscope.top_activations` and :func:`explain_dataset`) streams the data here;
``backend="ray"`` or :class:`Ray` cuts it into shards that Ray workers run, each with its own copy
of the model (built by ``model_factory``, the weights sent from here), and merges their partial
results: counts, sums, extremes, histograms, top-k and per-item rows combine associatively, so
the result is the local one to floating-point rounding. :class:`Coverage` says which items a
result covers; a shard that failed after its retries is listed there with its items.
"""

from deepscope.scale.backends import Coverage, Ray, ShardFailure
from deepscope.scale.explain import DatasetExplanation, ShardFile, explain_dataset, open_explanations

__all__ = ["Coverage", "DatasetExplanation", "Ray", "ShardFailure", "ShardFile", "explain_dataset", "open_explanations"]
