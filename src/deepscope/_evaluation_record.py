"""Write an :class:`~deepscope.evaluation.Evaluation` into a run store, under the ``evaluation/`` tags.

Numbers go to the run's meta as JSON (``json_safe``: NaN written as null, "not measured"), arrays that the report
draws as tensors. The report's *Evaluation* sections (:mod:`deepscope._report_evaluation`) read
exactly these keys back, without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepscope._store_writer import json_safe
from deepscope._tags import TAGS
from deepscope.store import RunWriter, delete_run

__all__ = ["record_evaluation"]

_P = TAGS.EVALUATION


def record_evaluation(result: Any, run_dir: Path, *, name: str, overwrite: bool) -> Path:
    """Store ``result`` (an ``Evaluation``) in a new run at ``run_dir``; return the folder."""
    if overwrite:
        delete_run(run_dir)
    m = result.metrics
    config = {"task": "evaluation", "data": result.description, **result.params}
    with RunWriter(run_dir, name=name, config=config, versions=result.versions) as w:
        w.set_meta(TAGS.CLASS_NAMES, list(result.class_names))
        w.set_meta(f"{_P}/description", result.description)
        w.set_meta(f"{_P}/summary", json_safe({**result.summary(), "examples": result.images, "level": m.level}))
        w.set_meta(f"{_P}/table", json_safe(result.table()))
        w.set_meta(f"{_P}/confused", json_safe([list(pair) for pair in result.confused]))
        w.add_tensor(f"{_P}/confusion", 0, m.confusion)
        c = result.calibration
        w.set_meta(
            f"{_P}/calibration",
            json_safe({"edges": c.edges, "confidence": c.confidence, "accuracy": c.accuracy, "counts": c.counts,
                   "ece": c.ece, "mce": c.mce}),
        )  # fmt: skip
        if result.curves is not None:
            k = result.curves
            w.set_meta(f"{_P}/curves", json_safe({"roc_auc": k.roc_auc, "average_precision": k.average_precision}))
            for part in ("fpr", "tpr", "precision", "recall"):
                w.add_tensor(f"{_P}/curves/{part}", 0, np.asarray(getattr(k, part), np.float32))
        if result.groups is not None:
            w.set_meta(f"{_P}/groups", _groups(result.groups))
        _gallery(w, result.gallery)
        if getattr(result, "cells", None) is not None:
            _cells(w, result.cells)
        if result.embedding is not None:
            e = result.embedding
            w.set_meta(f"{_P}/embedding", {"layer": e.layer, "projection": e.projection})
            for part in ("points", "indices", "labels", "preds"):
                w.add_tensor(f"{_P}/embedding/{part}", 0, np.asarray(getattr(e, part)))
        if result.audit is not None:
            _audit(w, result.audit)
    return run_dir


def _groups(g: Any) -> Any:
    return json_safe(
        {"names": g.names, "counts": g.counts, "accuracy": g.accuracy, "balanced_accuracy": g.balanced_accuracy,
         "recall": g.recall, "selection_rate": g.selection_rate, "accuracy_gap": g.accuracy_gap,
         "balanced_accuracy_gap": g.balanced_accuracy_gap, "largest_gap": g.largest_gap}
    )  # fmt: skip


def _gallery(w: RunWriter, g: Any) -> None:
    w.set_meta(
        f"{_P}/gallery",
        json_safe({"order": g.order, "indices": g.indices, "labels": g.labels, "preds": g.preds,
               "true_probability": g.true_probability, "pred_probability": g.pred_probability, "losses": g.losses,
               "maps": g.maps is not None}),
    )  # fmt: skip
    if len(g.indices):
        w.add_tensor(f"{_P}/gallery/inputs", 0, g.inputs.astype(np.float16))
        if g.maps is not None:
            w.add_tensor(f"{_P}/gallery/maps", 0, g.maps.astype(np.float16))


def _cells(w: RunWriter, c: Any) -> None:
    """Each confusion cell's highest-loss examples: numbers in the meta, positions and image inputs as tensors."""
    w.set_meta(
        f"{_P}/cells",
        json_safe({"order": "loss", "per_cell": c.per_cell, "kept": len(c.indices), "wanted": c.wanted, "cap": c.cap,
               "capped": c.capped, "inputs": c.inputs is not None, "note": c.note, "indices": c.indices,
               "labels": c.labels, "preds": c.preds, "true_probability": c.true_probability,
               "pred_probability": c.pred_probability, "losses": c.losses}),
    )  # fmt: skip
    if len(c.indices):
        w.add_tensor(f"{_P}/cells/indices", 0, np.asarray(c.indices, np.int64))
        if c.inputs is not None:
            w.add_tensor(f"{_P}/cells/inputs", 0, c.inputs.astype(np.float16))  # as the gallery's


def _audit(w: RunWriter, a: Any) -> None:
    w.set_meta(
        f"{_P}/audit",
        json_safe({
            "method": a.method, "per_class": a.per_class, "class_area": a.class_area, "group_names": a.group_names,
            "per_group": a.per_group, "flagged": a.flagged, "examples": {str(c): v for c, v in a.examples.items()},
            "max_share": a.max_share, "min_concentration": a.min_concentration, "audited": len(a.indices),
        }),
    )  # fmt: skip
    w.add_tensor(f"{_P}/audit/inside", 0, a.inside.astype(np.float32))
    w.add_tensor(f"{_P}/audit/labels", 0, a.labels.astype(np.int64))
    w.add_tensor(f"{_P}/audit/indices", 0, np.asarray(a.indices, np.int64))  # positions in the data, and the
    w.add_tensor(f"{_P}/audit/preds", 0, np.asarray(a.preds, np.int64))  # predictions: the dashboard's cells
    if len(a.example_inputs):
        w.add_tensor(f"{_P}/audit/example_inputs", 0, a.example_inputs.astype(np.float16))
        w.add_tensor(f"{_P}/audit/example_maps", 0, a.example_maps.astype(np.float16))
