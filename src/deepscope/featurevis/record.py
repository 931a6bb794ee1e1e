"""Store feature visualisations in a run, under the ``featurevis/`` tags, for the report.

The report's *Feature visualisation* section (:mod:`deepscope._report_featurevis`) reads them back
without torch: per result, its images (float16), its objective curve and its description.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from deepscope._store_writer import json_safe
from deepscope._tags import TAGS
from deepscope.featurevis.render import FeatureVis
from deepscope.store import RunWriter, delete_run

__all__ = ["record_feature_vis"]


def record_feature_vis(
    run_dir: str | os.PathLike[str],
    results: Mapping[str, FeatureVis],
    *,
    name: str = "feature visualisation",
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write ``results`` (title → :class:`FeatureVis`) into a new run at ``run_dir``; return the folder."""
    path = Path(run_dir)
    if overwrite:
        delete_run(path)
    prefix = TAGS.FEATURE_VIS
    versions = next(iter(results.values())).versions if results else {}
    with RunWriter(path, name=name, config={"task": "feature visualisation"}, versions=versions) as w:
        w.set_meta(f"{prefix}/description", description)
        w.set_meta(f"{prefix}/results", list(results))
        for i, (title, result) in enumerate(results.items()):
            base = f"{prefix}/{i}"
            w.set_meta(
                base,
                json_safe({"title": title, "objective": result.objective, "labels": list(result.labels),
                           "params": result.params}),
            )  # fmt: skip
            w.add_tensor(f"{base}/images", 0, result.images.numpy().astype(np.float16))
            w.add_tensor(f"{base}/curve", 0, result.curve.numpy().astype(np.float32))
    return path
