"""Feature visualisation panel: the optimised images of each recorded objective, their curves and settings.

Reads what :func:`deepscope.featurevis.record_feature_vis` stored (``featurevis/`` tags), as the
report's section does (:mod:`deepscope._report_featurevis`): per result ``i``, the meta
``featurevis/{i}`` (title, objective, labels, params), the images ``featurevis/{i}/images``
``(N, 3, H, W)`` and the objective per step and image ``featurevis/{i}/curve`` ``(steps, N)``.
Images are shown as they are (clipped to [0, 1], never rescaled per tile, as the report's figure).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deepscope._tags import TAGS
from deepscope.server._figures import image_uri, json_floats
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["PANEL", "result_impl", "results_impl"]

_P = TAGS.FEATURE_VIS


def _titles(meta: dict[str, Any]) -> list[str]:
    return list(meta.get(f"{_P}/results") or [])


def results_impl(reader: RunReader) -> dict[str, Any]:
    """The recorded results: ``{"description", "results": [{index, title, objective, count, labels}]}``."""
    meta = reader.meta()
    results = []
    for i, title in enumerate(_titles(meta)):
        info = meta.get(f"{_P}/{i}") or {}
        labels = list(info.get("labels") or [])
        results.append(
            {"index": i, "title": info.get("title", title), "objective": info.get("objective", ""), "labels": labels}
        )
    return {"description": meta.get(f"{_P}/description") or "", "results": results}


def _setting(value: Any) -> str:
    """A setting as short text: numbers as ``%g``, lists joined by commas, the rest as JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(_setting(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def result_impl(reader: RunReader, *, index: int = 0) -> dict[str, Any]:
    """Result ``index``: its images with their labels, its objective curves and its settings.

    Returns:
        ``{"index", "count", "title", "objective", "labels", "images": [uri], "size": [H, W], "steps": [1..S],
        "curves": [image][step], "mean": [step], "final": [image], "settings": [[name, text]]}``:
        ``curves`` is the objective of each image per optimisation step (on the transformed image),
        ``mean`` their mean (the report's curve), ``final`` each image's last value.

    Raises:
        IndexError: no result ``index`` (the message gives the valid range).
    """
    meta = reader.meta()
    count = len(_titles(meta))
    if not 0 <= index < count:
        valid = f"0..{count - 1}" if count else "none: this run holds no feature visualisation"
        raise IndexError(f"no feature visualisation result {index}; valid indices: {valid}")
    base = f"{_P}/{index}"
    info = meta.get(base) or {}
    images = reader.tensor(f"{base}/images", 0).astype(np.float32)  # (N, 3, H, W)
    curve = np.asarray(reader.tensor(f"{base}/curve", 0), dtype=np.float64)  # (steps, N)
    curve = curve.reshape(len(curve), -1)
    labels = [str(label) for label in info.get("labels") or []]
    labels += [f"image {i}" for i in range(len(labels), len(images))]
    params = info.get("params") or {}
    return {
        "index": index,
        "count": count,
        "title": info.get("title", _titles(meta)[index]),
        "objective": info.get("objective", ""),
        "labels": labels[: len(images)],
        "images": [image_uri(np.clip(image, 0.0, 1.0)) for image in images],
        "size": list(images.shape[2:]),
        "steps": list(range(1, len(curve) + 1)),
        "curves": json_floats(curve.T),
        "mean": json_floats(curve.mean(1)) if curve.size else [],
        "final": json_floats(curve[-1]) if len(curve) else [],
        "settings": [[str(key), _setting(value)] for key, value in params.items()],
    }


PANEL = Panel(
    name="featurevis",
    title="Feature visualisation",
    available=lambda reader: f"{_P}/results" in reader.meta(),
    routes=(Route("results", results_impl), Route("result", result_impl)),
)
