"""Feature visualisation: the input a neuron, channel, layer or class responds to most (Olah et al. 2017).

- :mod:`~deepscope.featurevis.objectives`: what to maximise, with ``+ − ×`` algebra (neuron, channel,
  DeepDream layer, class logit, direction, diversity; L1, L2 and total-variation penalties).
- :mod:`~deepscope.featurevis.param`: pixels, or a 1/f-scaled Fourier spectrum in decorrelated colour.
- :mod:`~deepscope.featurevis.transforms`: pad, jitter, random scale and rotation, from a generator.
- :mod:`~deepscope.featurevis.render`: :func:`feature_vis` and the channel atlas :func:`feature_vis_grid`;
  :func:`record_feature_vis` stores results in a run for the report.
"""

from deepscope.featurevis import objectives, param, transforms
from deepscope.featurevis.record import record_feature_vis
from deepscope.featurevis.render import FeatureVis, feature_vis, feature_vis_grid

__all__ = ["FeatureVis", "feature_vis", "feature_vis_grid", "objectives", "param", "record_feature_vis", "transforms"]
