"""Representations panel: each layer's probe-set snapshots in 2-D, the toy decision map and the feature evolution.

Reads the tags the report's *Inside the network*, *decision boundary* and *feature evolution* sections
read (``repr/<layer>``, ``input/grid_score``, ``evolution/<layer>/...``). The 2-D frames are the report's
own: :func:`deepscope._probe_readers.scatter_sequence` (``project_frames``, aligned frame to frame) followed by
the per-frame z-score and the all-frames axis limits of :func:`deepscope.plots.representation_animation`.
They are computed once per (run folder, layer, projection) and store version, and sent whole, so the
browser's step slider moves without asking again. Decision maps and evolution tiles come one step at a time.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from deepscope import plots
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.projection import PROJECTIONS, project_frames
from deepscope.server._cache import RunCache
from deepscope.server._figures import image_uri, json_floats
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["PANEL", "decision_impl", "evolution_impl", "frames_impl", "index_impl"]

_DIGITS = 3  # z-scores and probabilities of a few units: 3 decimals are far below a pixel, and halve the JSON
_CACHE = RunCache(8)  # projected frames per (run, layer, projection)
_SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down", "P": "cross"}
_SYMBOLS |= {"X": "x", "*": "star"}  # matplotlib marker -> Plotly symbol, so classes look as in the report


def _repr_layers(reader: RunReader) -> list[str]:
    """Layers with snapshots: the recorded ``repr/layers`` order, then any other ``repr/<layer>`` tag."""
    prefix = TAGS.REPR.format(layer="")
    stored = [t.removeprefix(prefix) for t in reader.tensor_tags() if t.startswith(prefix)]
    listed = [str(layer) for layer in reader.meta().get(TAGS.LAYERS) or [] if str(layer) in stored]
    return listed + [layer for layer in stored if layer not in listed]


def _evolution_layers(reader: RunReader) -> list[str]:
    tags = set(reader.tensor_tags())
    layers = reader.meta().get(TAGS.EVOLUTION_LAYERS) or []
    return [str(layer) for layer in layers if f"{TAGS.EVOLUTION.format(layer=layer)}/patches" in tags]


def _has_grid(reader: RunReader) -> bool:
    return TAGS.GRID_SCORE in reader.tensor_tags() and TAGS.GRID_EXTENT in reader.meta()


def _available(reader: RunReader) -> bool:
    return bool(_repr_layers(reader)) or _has_grid(reader) or bool(_evolution_layers(reader))


def _labels(reader: RunReader) -> np.ndarray | None:
    return reader.tensor(TAGS.PROBE_LABELS, 0) if TAGS.PROBE_LABELS in reader.tensor_tags() else None


def _class_names(reader: RunReader) -> list[str]:
    """The report's class names, completed with ``class k`` for any label beyond the recorded list."""
    from deepscope._probe_readers import class_names as report_names

    names = report_names(reader)
    labels = _labels(reader)
    count = max(len(names), int(labels.max()) + 1 if labels is not None and labels.size else 1)
    return names + [f"class {k}" for k in range(len(names), count)]


def _at(reader: RunReader, tag: str, step: int) -> np.ndarray:
    """``reader.tensor(tag, step)``; a missing step is a LookupError whose text is the store's plain message."""
    try:
        return reader.tensor(tag, step)
    except UnknownNameError:
        raise
    except KeyError as err:  # str(KeyError) would quote the message
        raise LookupError(str(err.args[0])) from None


def _steps(values: np.ndarray) -> list[int]:
    return [int(s) for s in values]


def _layer_notes(meta: dict[str, Any], layer: str) -> list[str]:
    """How the recorder reduced the layer's output before storing it (pooling, random projection)."""
    notes = []
    pooling = meta.get(f"{TAGS.POOLING}/{layer}")
    if isinstance(pooling, dict):
        grid = "×".join(str(g) for g in pooling.get("grid", []))
        notes.append(f"average-pooled to a {grid} grid: {pooling.get('from')} → {pooling.get('to')} values")
    projection = meta.get(f"{TAGS.PROJECTION}/{layer}")
    if isinstance(projection, dict):
        notes.append(f"Gaussian random projection: {projection.get('from')} → {projection.get('to')} values")
    return notes


def _projections() -> list[str]:
    return [p for p in PROJECTIONS if p != "umap" or importlib.util.find_spec("umap") is not None]


def index_impl(reader: RunReader) -> dict[str, Any]:
    """What the panel can show for the run: layers and their steps, class encoding, accuracy, grid, evolution.

    Returns:
        ``{"layers": [{name, steps, width, notes}], "projections", "class_names", "class_colors",
        "class_symbols", "predictions", "accuracy": {steps, values, balanced} | None, "majority_baseline",
        "decision": {steps, extent, points, labels} | None, "evolution": [{layer, steps, channels, field}]}``.
    """
    meta, tags, scalar_tags = reader.meta(), set(reader.tensor_tags()), reader.scalar_tags()
    layers = []
    for layer in _repr_layers(reader):
        tag = TAGS.REPR.format(layer=layer)
        steps = reader.tensor_steps(tag)
        width = int(np.prod(reader.tensor(tag, int(steps[0])).shape[1:]))
        layers.append({"name": layer, "steps": _steps(steps), "width": width, "notes": _layer_notes(meta, layer)})
    names = _class_names(reader)
    accuracy = None
    if TAGS.ACCURACY in scalar_tags:
        acc = reader.scalars(TAGS.ACCURACY)
        balanced = reader.scalars(TAGS.BALANCED_ACCURACY) if TAGS.BALANCED_ACCURACY in scalar_tags else None
        accuracy = {
            "steps": _steps(acc.steps),
            "values": json_floats(acc.values),
            "balanced": json_floats(balanced.values) if balanced and len(balanced) == len(acc) else None,
        }
    decision = None
    if _has_grid(reader):
        inputs = reader.tensor(TAGS.PROBE_INPUTS, 0) if TAGS.PROBE_INPUTS in tags else None
        labels = _labels(reader)
        flat = inputs is not None and inputs.ndim == 2 and inputs.shape[1] == 2
        decision = {
            "steps": _steps(reader.tensor_steps(TAGS.GRID_SCORE)),
            "extent": json_floats(meta[TAGS.GRID_EXTENT]),
            "points": json_floats(np.round(inputs.astype(np.float64), _DIGITS + 1)) if flat else [],
            "labels": labels.tolist() if flat and labels is not None else [],
        }
    evolution = []
    for layer in _evolution_layers(reader):
        base = TAGS.EVOLUTION.format(layer=layer)
        info = meta.get(base) or {}
        evolution.append(
            {
                "layer": layer,
                "steps": _steps(reader.tensor_steps(f"{base}/patches")),
                "channels": [int(c) for c in info.get("channels", [])],
                "field": info.get("field"),
            }
        )
    baseline = meta.get(TAGS.MAJORITY_BASELINE)
    return {
        "layers": layers,
        "projections": _projections(),
        "class_names": names,
        "class_colors": [plots.class_color(k) for k in range(len(names))],
        "class_symbols": [_SYMBOLS[plots.class_marker(k)] for k in range(len(names))],
        "predictions": TAGS.PROBE_PRED in tags,
        "accuracy": accuracy,
        "majority_baseline": float(baseline) if isinstance(baseline, (int, float)) else None,
        "decision": decision,
        "evolution": evolution,
    }


def _frames(reader: RunReader, layer: str, projection: str) -> dict[str, Any]:
    """The report's frames of ``layer``: projected, aligned, z-scored per frame; axis limits over all frames."""
    from deepscope._probe_readers import scatter_sequence

    tag = TAGS.REPR.format(layer=layer)
    labels, tags = _labels(reader), set(reader.tensor_tags())
    pred_by_step = dict(zip(*reader.tensors(TAGS.PROBE_PRED), strict=True)) if TAGS.PROBE_PRED in tags else {}
    with_pred = labels is not None and any(int(s) in pred_by_step for s in reader.tensor_steps(tag))
    pred = None
    try:
        if with_pred:  # the report's path: the frames that have predictions
            sequence = scatter_sequence(reader, tag, projection)  # type: ignore[arg-type]  # checked by the caller
            steps, points = sequence.steps, sequence.points
            pred = np.stack([pred_by_step[int(s)] for s in steps])  # (F, N)
        else:  # no predictions (or no labels): every snapshot, coloured by label only
            steps, values = reader.tensors(tag)
            points = project_frames([v.reshape(len(v), -1) for v in values], projection)  # type: ignore[arg-type]
    except ImportError as err:
        raise ValueError(f"{err}; valid here: {', '.join(_projections())}") from None
    z = plots.zscore(points)  # (F, N, 2), as the report's animation draws them
    width = int(np.prod(reader.tensor(tag, int(steps[0])).shape[1:]))
    axes = ("unit 1", "unit 2") if width <= 2 else ("PC 1", "PC 2") if projection == "pca" else ("UMAP 1", "UMAP 2")
    labels = labels if labels is not None and len(labels) == z.shape[1] else np.zeros(z.shape[1], dtype=np.int64)
    return {
        "layer": layer,
        "projection": projection if width > 2 else "none",
        "width": width,
        "axis_names": [f"{a} (z-score)" for a in axes],
        "steps": _steps(steps),
        "points": json_floats(np.round(z, _DIGITS)),
        "labels": labels.tolist(),
        "pred": pred.tolist() if pred is not None else None,
        "accuracy": json_floats((pred == labels).mean(axis=1)) if pred is not None else None,
        "limits": {"x": list(plots._limits(z[..., 0])), "y": list(plots._limits(z[..., 1]))},
    }


def frames_impl(reader: RunReader, *, layer: str, projection: str = "pca") -> dict[str, Any]:
    """Every 2-D frame of ``layer``, as the report animates them (cached per run folder, store version and layer).

    Returns:
        ``{"layer", "projection", "width", "axis_names", "steps", "points": (F, N, 2), "labels": (N,),
        "pred": (F, N) | None, "accuracy": (F,) | None, "limits": {"x": [lo, hi], "y": [lo, hi]}}``;
        ``projection`` is ``"none"`` for a layer of at most 2 values, drawn as it is.

    Raises:
        UnknownNameError: the run has no snapshots of ``layer``.
        ValueError: ``projection`` is unknown, or ``umap`` without umap-learn installed.
    """
    layers = _repr_layers(reader)
    if layer not in layers:
        raise UnknownNameError("representation layer", layer, layers)
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; valid: {', '.join(_projections())}")
    return _CACHE.get(reader, (layer, projection), lambda: _frames(reader, layer, projection))


def decision_impl(reader: RunReader, *, step: int) -> dict[str, Any]:
    """The 2-D toy task's decision map at ``step``: the class-1 probability on the recorded grid.

    Returns:
        ``{"step", "extent": [xmin, xmax, ymin, ymax], "x": (G,), "y": (G,), "scores": (G, G) rows along y,
        "colors": the report's 10 probability bins (hex), "positive": the class-1 name}``.

    Raises:
        UnknownNameError: the run recorded no decision map.
        LookupError: no map at ``step`` (the message lists the nearest stored steps).
    """
    from matplotlib.colors import to_hex

    from deepscope._decision_plots import probability_cmap

    if not _has_grid(reader):
        raise UnknownNameError("tensor tag", TAGS.GRID_SCORE, [t for t in reader.tensor_tags() if "grid" in t])
    scores = _at(reader, TAGS.GRID_SCORE, step).astype(np.float64)  # (G, G)
    extent = [float(v) for v in reader.meta()[TAGS.GRID_EXTENT]]
    cmap, _ = probability_cmap()
    names = _class_names(reader)
    return {
        "step": int(step),
        "extent": extent,
        "x": np.linspace(extent[0], extent[1], scores.shape[1]).tolist(),
        "y": np.linspace(extent[2], extent[3], scores.shape[0]).tolist(),
        "scores": json_floats(np.round(scores, _DIGITS)),
        "colors": [to_hex(c) for c in cmap.colors],
        "positive": names[1] if len(names) > 1 else "class 1",
    }


def evolution_impl(reader: RunReader, *, layer: str, step: int) -> dict[str, Any]:
    """Feature evolution of ``layer`` at ``step``: per channel its strongest unit's patch and DeconvNet projection.

    Tiles are scaled as in the report's strip (``_layer_plots.scaled_tile``: patches min–max, projections
    symmetric around grey at the 99th percentile of ``|v|``).

    Returns:
        ``{"layer", "step", "field", "tiles": [{channel, score, image, label, patch, projection}]}``: ``image``
        is the probe image's index, ``label`` its true class (or None); ``patch``/``projection`` are PNG data URIs.

    Raises:
        UnknownNameError: the run has no feature evolution of ``layer``.
        LookupError: no snapshot at ``step`` (the message lists the nearest stored steps).
    """
    from deepscope._layer_plots import scaled_tile

    layers = _evolution_layers(reader)
    if layer not in layers:
        raise UnknownNameError("evolution layer", layer, layers)
    base = TAGS.EVOLUTION.format(layer=layer)
    patches = _at(reader, f"{base}/patches", step).astype(np.float32)  # (C, C_in, h, w)
    projections = _at(reader, f"{base}/projections", step).astype(np.float32)
    tags = set(reader.tensor_tags())
    scores = reader.tensor(f"{base}/scores", step) if f"{base}/scores" in tags else np.full(len(patches), np.nan)
    images = reader.tensor(f"{base}/images", step) if f"{base}/images" in tags else np.full(len(patches), -1)
    info = reader.meta().get(base) or {}
    channels = [int(c) for c in info.get("channels", range(len(patches)))]
    labels = _labels(reader)
    everywhere = np.ones(patches.shape[-2:], dtype=bool)
    tiles = []
    for i, channel in enumerate(channels[: len(patches)]):
        image = int(images[i])
        tiles.append(
            {
                "channel": channel,
                "score": json_floats(scores[i]),
                "image": image if image >= 0 else None,
                "label": int(labels[image]) if labels is not None and 0 <= image < len(labels) else None,
                "patch": image_uri(scaled_tile(patches[i], everywhere, signed=False), vmin=0.0, vmax=1.0),
                "projection": image_uri(scaled_tile(projections[i], everywhere, signed=True), vmin=0.0, vmax=1.0),
            }
        )
    return {"layer": layer, "step": int(step), "field": info.get("field"), "tiles": tiles}


PANEL = Panel(
    name="representation",
    title="Representations",
    available=_available,
    routes=(
        Route("index", index_impl),
        Route("frames", frames_impl),
        Route("decision", decision_impl),
        Route("evolution", evolution_impl),
    ),
)
