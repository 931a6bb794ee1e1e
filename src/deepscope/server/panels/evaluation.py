"""Evaluation panel: the confusion matrix with click-through to each cell's examples, metrics, groups, calibration.

Reads what :meth:`deepscope.evaluation.Evaluation.record` stored (the ``evaluation/`` tags), with the
report's helpers (:mod:`deepscope._report_evaluation`, :mod:`deepscope._evaluation_plots`) so both
print the same numbers. A run keeps the inputs of each confusion cell's highest-loss examples
(``evaluation/cells``; runs recorded before it, only the error gallery's worst misclassified examples)
and of the cue audit's flagged examples, so a cell's answer says how many examples it holds, how many
of them are shown and which, and where the rest lie in the data when the 2-D map's sample knows their
positions: nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from deepscope import _evaluation_plots as plots
from deepscope._attribution_plots import as_rgb, overlay
from deepscope._evaluation_cells import cell_note
from deepscope._format import cell
from deepscope._report_evaluation import interval_text, row_interval_text
from deepscope._tags import TAGS
from deepscope.server._figures import image_uri, json_floats, png_uri
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = [
    "PANEL",
    "audit_impl",
    "calibration_impl",
    "cell_impl",
    "classes_impl",
    "confusion_impl",
    "groups_impl",
    "summary_impl",
]

_P = TAGS.EVALUATION
_METRICS = (("precision", "precision"), ("recall", "recall (sensitivity)"), ("specificity", "specificity"))
_METRICS += (("f1", "F1"),)
_HEADLINE = (
    ("accuracy", "Accuracy", True),
    ("balanced_accuracy", "Balanced accuracy", True),
    ("majority_baseline", "Majority baseline", False),
    ("ece", "ECE", False),
    ("largest_group_gap", "Largest group gap", False),
    ("roc_auc", "ROC AUC", False),
    ("average_precision", "Average precision", False),
)


def _meta(reader: RunReader) -> tuple[dict[str, Any], list[str]]:
    """The run's meta and class names (one per row of the confusion matrix); LookupError without an evaluation."""
    meta = reader.meta()
    if f"{_P}/summary" not in meta:
        raise LookupError(f"run {reader.info.name!r} holds no evaluation (deepscope.evaluate(...).record(run_dir))")
    names = [str(n) for n in meta.get(TAGS.CLASS_NAMES) or []]
    classes = len(meta.get(f"{_P}/table") or names)
    return meta, names + [str(k) for k in range(len(names), classes)]


def _spread(value: Any, low: Any, high: Any) -> dict[str, Any]:
    return {"value": value, "low": low, "high": high, "text": f"{cell(value)} [{cell(low)}, {cell(high)}]"}


def summary_impl(reader: RunReader) -> dict[str, Any]:
    """The headline numbers and the report's summary sentences.

    Returns:
        ``{"classes", "description", "examples", "level", "metrics": [{key, label, value, low, high, text}],
        "text": [sentences], "below_baseline", "sections": {"groups", "audit"}}``.
    """
    meta, names = _meta(reader)
    s = meta[f"{_P}/summary"]
    level = s["level"]
    metrics = []
    for key, label, spread in _HEADLINE:
        if key in s:
            low, high = (s.get(f"{key}_low"), s.get(f"{key}_high")) if spread else (None, None)
            item = _spread(s[key], low, high) if spread else {"value": s[key], "text": cell(s[key])}
            metrics.append({"key": key, "label": label, **item})
    text = [
        f"Data: {meta.get(f'{_P}/description') or 'the given examples'} ({s['examples']} examples). Accuracy "
        f"{interval_text(s, 'accuracy')} against a majority-class baseline of {cell(s['majority_baseline'])}; balanced "
        f"accuracy (mean recall over the classes) {interval_text(s, 'balanced_accuracy')}; {level:.0%} bootstrap "
        f"intervals. Expected calibration error {cell(s['ece'])}."
    ]
    below = s["accuracy"] is not None and s["accuracy"] <= s["majority_baseline"]
    if below:
        text.append("The accuracy is not above the majority baseline: the model has learnt nothing usable here.")
    return {
        "classes": names,
        "description": meta.get(f"{_P}/description") or "",
        "examples": s["examples"],
        "level": level,
        "metrics": metrics,
        "text": text,
        "below_baseline": below,
        "sections": {"groups": f"{_P}/groups" in meta, "audit": f"{_P}/audit" in meta},
    }


def confusion_impl(reader: RunReader) -> dict[str, Any]:
    """The confusion matrix (rows: true class), its row-normalised shares and the stored examples per cell.

    Returns:
        ``{"classes", "counts", "rates" (None for a class without examples), "support", "total", "correct",
        "shown" (the classes drawn: all up to 30, as the report), "confused": [{true, pred, count, rate}],
        "stored": [[true, pred, examples the cell shows], ...]}``.
    """
    meta, names = _meta(reader)
    counts = np.asarray(reader.tensor(f"{_P}/confusion", 0), np.int64)
    support = counts.sum(1)
    confused = meta.get(f"{_P}/confused") or []
    stored = Counter((e["true"], e["pred"]) for e in _stored(reader, meta) if e["pred"] is not None)
    return {
        "classes": names,
        "counts": counts.tolist(),
        "rates": json_floats(counts / np.where(support > 0, support, np.nan)[:, None]),
        "support": support.tolist(),
        "total": int(counts.sum()),
        "correct": int(np.trace(counts)),
        "shown": plots.shown_classes(counts, confused).tolist(),
        "confused": [{"true": int(t), "pred": int(p), "count": int(n), "rate": r} for t, p, n, r in confused],
        "stored": [[t, p, n] for (t, p), n in sorted(stored.items())],
    }


def _sample(reader: RunReader, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(positions, labels, preds)`` of the 2-D map's sample (every example when the data was small), or None."""
    if f"{_P}/embedding" not in meta:
        return None
    parts = [
        np.asarray(reader.tensor(f"{_P}/embedding/{part}", 0), np.int64) for part in ("indices", "labels", "preds")
    ]
    return parts[0], parts[1], parts[2]


def _predictions(reader: RunReader, meta: dict[str, Any]) -> dict[int, int]:
    """Predicted class by data position, from the 2-D map's sample and the cue audit's sample (when stored)."""
    known: dict[int, int] = {}
    sample = _sample(reader, meta)
    if sample is not None:
        known.update(zip(sample[0].tolist(), sample[2].tolist(), strict=True))
    tags = reader.tensor_tags()
    if f"{_P}/audit/indices" in tags and f"{_P}/audit/preds" in tags:  # written since the panel exists
        indices, preds = (reader.tensor(f"{_P}/audit/{part}", 0).tolist() for part in ("indices", "preds"))
        known.update(zip(indices, preds, strict=True))
    return known


def _stored(reader: RunReader, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every example kept: each cell's highest-loss ones, then the error gallery's, the cue audit's (positions once).

    A cell's example that the gallery holds too comes as the gallery's (with its Grad-CAM), in the cell's order.
    """
    g = meta.get(f"{_P}/gallery") or {}
    out = [
        {"index": i, "true": t, "pred": p, "true_probability": pt, "confidence": pp, "loss": loss,
         "source": "gallery", "_row": row}
        for row, (i, t, p, pt, pp, loss) in enumerate(zip(
            g.get("indices", []), g.get("labels", []), g.get("preds", []), g.get("true_probability", []),
            g.get("pred_probability", []), g.get("losses", []), strict=True,
        ))
    ]  # fmt: skip
    c = meta.get(f"{_P}/cells")
    if c:  # recorded since the cells are kept
        gallery = {e["index"]: e for e in out}
        cells = [
            gallery.get(i) or {"index": i, "true": t, "pred": p, "true_probability": pt, "confidence": pp,
                               "loss": loss, "source": "cells", "_row": row}
            for row, (i, t, p, pt, pp, loss) in enumerate(zip(
                c["indices"], c["labels"], c["preds"], c["true_probability"], c["pred_probability"], c["losses"],
                strict=True,
            ))
        ]  # fmt: skip
        kept = {e["index"] for e in cells}
        out = cells + [e for e in out if e["index"] not in kept]
    a = meta.get(f"{_P}/audit") or {}
    if a.get("flagged"):
        seen, known = {e["index"] for e in out}, _predictions(reader, meta)
        positions = [(c, i) for c in a["flagged"] for i in a["examples"][str(c)]]  # the order of example_inputs
        for row, (c, i) in enumerate(positions):
            if i not in seen:
                out.append({"index": i, "true": c, "pred": known.get(i), "true_probability": None, "confidence": None,
                            "loss": None, "source": "audit", "_row": row})  # fmt: skip
    return out


def _with_images(reader: RunReader, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``examples`` with ``image`` (the input) and ``map`` (its Grad-CAM over it) as data URIs, None if not images."""
    tags, loaded = reader.tensor_tags(), {}
    parts = {"gallery": ("gallery/inputs", "gallery/maps"), "audit": ("audit/example_inputs", "audit/example_maps"),
             "cells": ("cells/inputs", None)}  # fmt: skip
    for example in examples:
        source, row = example["source"], example.pop("_row")
        if source not in loaded:
            loaded[source] = [
                reader.tensor(f"{_P}/{part}", 0, mmap=True) if part and f"{_P}/{part}" in tags else None  # float16
                for part in parts[source]
            ]
        inputs, maps = loaded[source]
        images = inputs is not None and inputs.ndim == 4 and row < len(inputs) and _drawable(inputs)
        example["image"] = image_uri(as_rgb(inputs[row : row + 1])[0]) if images else None  # float64 inside
        drawn = images and maps is not None and row < len(maps) and maps.shape[1:] == inputs.shape[2:]
        example["map"] = image_uri(overlay(inputs[row], maps[row].astype(np.float64))) if drawn else None
    return examples


def _drawable(inputs: np.ndarray) -> bool:
    """Whether ``(N, C, H, W)`` inputs draw as pictures (1 or 3 channels); others are listed without one."""
    return inputs.shape[1] in (1, 3) or inputs.shape[-1] in (1, 3)


def cell_impl(reader: RunReader, *, true: int, pred: int) -> dict[str, Any]:
    """The examples of true class ``true`` predicted as ``pred``: those kept (highest loss first), and the count.

    Returns:
        ``{"true", "pred", "true_name", "pred_name", "count", "shown", "examples": [{index, true, pred,
        true_probability, confidence, loss, source ("cells", "gallery" or "audit"), image, map}], "note",
        "kept" (how many of them the run kept as the cell's highest-loss, None before it did), "positions" (positions
        known from the 2-D map's sample, or None), "positions_complete", "sample"}``.

    Raises:
        ValueError: ``true`` or ``pred`` is not a class index.
    """
    meta, names = _meta(reader)
    counts = np.asarray(reader.tensor(f"{_P}/confusion", 0), np.int64)
    for what, value in (("true", true), ("pred", pred)):
        if not 0 <= value < len(counts):
            listed = ", ".join(f"{k} {n}" for k, n in enumerate(names[:10])) + (" …" if len(names) > 10 else "")
            raise ValueError(f"{what} must be a class index in [0, {len(counts) - 1}] ({listed}), got {value}")
    count = int(counts[true, pred])
    examples = _with_images(reader, [e for e in _stored(reader, meta) if (e["true"], e["pred"]) == (true, pred)])
    sample = _sample(reader, meta)
    positions = None
    if sample is not None:
        positions = sorted(sample[0][(sample[1] == true) & (sample[2] == pred)].tolist())
    total = meta[f"{_P}/summary"]["examples"]
    note, kept = cell_note(meta, names, counts, true, pred, [e["source"] for e in examples])
    return {
        "true": true,
        "pred": pred,
        "true_name": names[true],
        "pred_name": names[pred],
        "count": count,
        "shown": len(examples),
        "examples": examples,
        "note": note,
        "kept": kept,
        "positions": positions,
        "positions_complete": positions is not None and len(positions) == count,
        "sample": None if sample is None else {"size": len(sample[0]), "of": total},
    }


def classes_impl(reader: RunReader) -> dict[str, Any]:
    """Per class: support, precision, recall (sensitivity), specificity and F1 with their bootstrap intervals.

    Returns:
        ``{"level", "metrics": [{key, label}], "rows": [{class, support, <metric>: {value, low, high, text}}]}``;
        ``text`` is the report's ``value [low, high]``.
    """
    meta, _ = _meta(reader)
    rows = [
        {"class": str(r["class"]), "support": int(r["support"]),
         **{k: {**_spread(r[k], r[f"{k}_low"], r[f"{k}_high"]), "text": row_interval_text(r, k)} for k, _ in _METRICS}}
        for r in meta[f"{_P}/table"]
    ]  # fmt: skip
    level = meta[f"{_P}/summary"]["level"]
    return {"level": level, "metrics": [{"key": k, "label": label} for k, label in _METRICS], "rows": rows}


def calibration_impl(reader: RunReader) -> dict[str, Any]:
    """The reliability diagram's bins: edges, centres, widths, mean confidence, accuracy and counts; ECE and MCE."""
    meta, _ = _meta(reader)
    c = meta[f"{_P}/calibration"]
    edges = np.asarray(c["edges"], np.float64)
    return {
        "edges": edges.tolist(),
        "centres": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "widths": np.diff(edges).tolist(),
        "confidence": c["confidence"],
        "accuracy": c["accuracy"],
        "counts": c["counts"],
        "ece": c["ece"],
        "mce": c.get("mce"),
        "text": f"Expected calibration error {cell(c['ece'])}, maximum calibration error {cell(c.get('mce'))}.",
    }


def groups_impl(reader: RunReader) -> dict[str, Any]:
    """Per group: examples, accuracy and balanced accuracy with intervals, their gaps to the best group, recall.

    Raises:
        LookupError: the evaluation was run without groups.
    """
    meta, names = _meta(reader)
    g = meta.get(f"{_P}/groups")
    if g is None:
        raise LookupError("this evaluation has no groups (pass groups=... to deepscope.evaluate)")
    rows = []
    for k, group in enumerate(g["names"]):
        row: dict[str, Any] = {"group": str(group), "examples": int(g["counts"][k])}
        for key in ("accuracy", "balanced_accuracy"):
            row[key] = _spread(*(g[key][part][k] for part in ("value", "low", "high")))
            row[f"{key}_gap"] = g[f"{key}_gap"][k]
        row["recall"] = g["recall"]["value"][k]
        rows.append(row)
    text = (
        f"Metrics inside each group (fairlearn's definitions: the metric on the group's examples; the gap is the "
        f"best group's value minus this one). Largest accuracy gap between groups: {cell(g['largest_gap'])}."
    )
    return {"classes": names, "rows": rows, "largest_gap": g["largest_gap"], "text": text}


def audit_impl(reader: RunReader) -> dict[str, Any]:
    """The spurious-cue audit: share of the attribution on the object per class and group, the verdict, evidence.

    Returns:
        ``{"method", "audited", "flagged": [class names], "verdict", "rows": [{class, share: {value, low, high,
        text}, area, flagged}], "groups": [{group, value, low, high}], "figure" (the report's PNG),
        "examples": [as cell_impl's]}``.

    Raises:
        LookupError: the evaluation was run without object masks or boxes.
    """
    meta, names = _meta(reader)
    a = meta.get(f"{_P}/audit")
    if a is None:
        raise LookupError("this evaluation has no cue audit (pass masks=... or boxes=... to deepscope.evaluate)")
    flagged = [names[c] for c in a["flagged"]]
    if flagged:
        verdict = (
            f"Flagged as relying mostly on context: {', '.join(flagged)}. Less than {a['max_share']:g} of their "
            f"attribution falls on the object, and less than {a['min_concentration']:g}× what a uniform map would "
            "put there. Check the data for a cue that travels with these labels."
        )
    else:
        verdict = "No class is flagged: the attribution concentrates on the objects."
    p = a["per_class"]
    rows = [
        {"class": names[k], "share": _spread(p["value"][k], p["low"][k], p["high"][k]), "area": a["class_area"][k],
         "flagged": k in a["flagged"]}
        for k in range(len(p["value"]))
    ]  # fmt: skip
    groups = []
    if a.get("per_group"):
        q = a["per_group"]
        groups = [
            {"group": str(n), **_spread(q["value"][k], q["low"][k], q["high"][k])}
            for k, n in enumerate(a["group_names"])
        ]
    order = {i: k for k, i in enumerate(i for c in a["flagged"] for i in a["examples"][str(c)])}
    examples = sorted((e for e in _stored(reader, meta) if e["index"] in order), key=lambda e: order[e["index"]])
    return {
        "method": a["method"],
        "audited": a["audited"],
        "flagged": flagged,
        "verdict": f"Spurious-cue audit on {a['audited']} examples (class-stratified). {verdict}",
        "rows": rows,
        "groups": groups,
        "figure": png_uri(lambda path: plots.audit_figure(a, names, path)),
        "examples": _with_images(reader, examples),
    }


PANEL = Panel(
    name="evaluation",
    title="Evaluation",
    available=lambda reader: f"{_P}/summary" in reader.meta(),
    routes=(
        Route("summary", summary_impl),
        Route("confusion", confusion_impl),
        Route("cell", cell_impl),
        Route("classes", classes_impl),
        Route("calibration", calibration_impl),
        Route("groups", groups_impl),
        Route("audit", audit_impl),
    ),
)
