"""Layers panel: what the layers of a network respond to (Zeiler & Fergus 2014), from ``LayerInspection.record``.

Reads the ``layers/`` tags the report's "Layers" section reads (:mod:`deepscope._report_layers`): the
first convolution's filters, one input's feature maps per layer, the top-k patches of each channel
with their DeconvNet projections and scores, the per-layer statistics, and the occlusion and
invariance studies. Tiles are drawn by the report's own code (``deepscope._layer_plots``), the
filters and occlusion figures are the report's PNGs; feature maps and invariance curves go to the
browser as numbers (Plotly).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from deepscope import plots
from deepscope._layer_plots import scaled_tile
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.server._api import NotFound
from deepscope.server._figures import image_uri, json_floats, png_uri
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["MAX_MAPS", "PANEL", "STAT_COLUMNS", "filters_impl", "index_impl", "invariance_impl", "maps_impl"]
__all__ += ["occlusion_impl", "top_impl", "unit_impl"]

_P = TAGS.LAYER_VIEWS
STAT_COLUMNS = ("layer", "channels", "mean", "std", "zero_fraction", "dead_channels", "saturation")
MAX_MAPS = 256  # feature maps sent per answer at most
_TRANSFORM_UNITS = {"translation": "shift (pixels)", "scale": "scale factor", "rotation": "rotation (degrees)"}
_NORMALIZATIONS = ("shared", "per_filter")
_OCCLUSION_PARTS = ("image", "projection", "activation", "probability", "top_class")


def _example_layers(reader: RunReader) -> list[str]:
    prefix = f"{_P}/example/"
    return [tag.removeprefix(prefix) for tag in reader.tensor_tags() if tag.startswith(prefix)]


def _plain(value: Any) -> Any:
    """A stats cell as JSON: NaN and inf become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _class_name(names: list[str], k: int) -> str:
    return names[k] if 0 <= k < len(names) else f"class {k}"


def index_impl(reader: RunReader) -> dict[str, Any]:
    """What the run holds: the layers (with which views each has), the statistics, the filters and the studies.

    Returns:
        ``{"description", "images", "layers": [{name, maps, top, k, channels, field}], "stats": {columns, rows},
        "filters": {layer, normalize, shape} | None, "occlusion": [{index, layer, channel, target, target_name}],
        "invariance": [transform, ...]}``; stats rows are lists in ``columns`` order, NaN as None.
    """
    meta = reader.meta()
    examples = _example_layers(reader)
    top = list(meta.get(f"{_P}/top") or [])
    layers = []
    for name in dict.fromkeys([*top, *examples]):
        info = meta.get(f"{_P}/top/{name}") or {}
        layers.append({"name": name, "maps": name in examples, "top": name in top, "k": info.get("k"),
                       "channels": info.get("channels", []), "field": info.get("field")})  # fmt: skip
    filters = meta.get(f"{_P}/filters")
    if filters is not None:
        filters = {**filters, "shape": list(reader.tensor(f"{_P}/filters", 0).shape)}
    occlusion = []
    for i in range(int(meta.get(f"{_P}/occlusion") or 0)):
        info = meta[f"{_P}/occlusion/{i}"]
        occlusion.append({"index": i, **{key: info[key] for key in ("layer", "channel", "target")},
                          "target_name": _class_name(info["class_names"], info["target"])})  # fmt: skip
    rows = meta.get(f"{_P}/stats") or []
    return {
        "description": meta.get(f"{_P}/description") or "",
        "images": meta.get(f"{_P}/images"),
        "layers": layers,
        "stats": {"columns": list(STAT_COLUMNS), "rows": [[_plain(row.get(c)) for c in STAT_COLUMNS] for row in rows]},
        "filters": filters,
        "occlusion": occlusion,
        "invariance": list(meta.get(f"{_P}/invariance") or []),
    }


def _rounded(values: np.ndarray, digits: int = 5) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits of their largest magnitude (a smaller JSON answer)."""
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    if largest == 0.0:
        return values
    return np.round(values, max(0, digits - 1 - math.floor(math.log10(largest))))


def maps_impl(reader: RunReader, *, layer: str, limit: int = 64) -> dict[str, Any]:
    """The feature maps of ``layer`` for the recorded example input, the first ``limit`` channels.

    Returns:
        ``{"layer", "channels", "shown", "height", "width", "maps": [C][H][W], "min", "max"}``: values
        rounded to 5 significant digits of the layer's largest; a vector layer ``(C,)`` gives 1×1 maps.

    Raises:
        UnknownNameError: the run holds no feature maps of ``layer``.
        ValueError: ``limit`` is outside 1..``MAX_MAPS``.
    """
    if not 1 <= limit <= MAX_MAPS:
        raise ValueError(f"limit must be between 1 and {MAX_MAPS} feature maps, got {limit}")
    examples = _example_layers(reader)
    if layer not in examples:
        raise UnknownNameError("layer with feature maps", layer, examples)
    maps = np.asarray(reader.tensor(f"{_P}/example/{layer}", 0), dtype=np.float64)
    if maps.ndim == 1:
        maps = maps[:, None, None]
    elif maps.ndim == 2:
        maps = maps[:, None, :]
    elif maps.ndim != 3:
        raise ValueError(f"the feature maps of {layer!r} have shape {maps.shape}; (C, H, W), (C, L) or (C,) expected")
    shown = maps[:limit]
    finite = shown[np.isfinite(shown)]
    channels, height, width = (int(n) for n in maps.shape)
    return {"layer": layer, "channels": channels, "shown": len(shown), "height": height, "width": width,
            "maps": json_floats(_rounded(shown)), "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None}  # fmt: skip


def _top(reader: RunReader, layer: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The meta and the arrays of ``layer``'s top-k views."""
    meta = reader.meta()
    layers = list(meta.get(f"{_P}/top") or [])
    if layer not in layers:
        raise UnknownNameError("layer with top activations", layer, layers)
    base = f"{_P}/top/{layer}"
    tags = set(reader.tensor_tags())
    parts = {p: reader.tensor(f"{base}/{p}", 0) for p in ("scores", "indices", "patches", "inside", "projections")
             if f"{base}/{p}" in tags}  # fmt: skip
    return meta[base], parts


def _rgb(tile: np.ndarray) -> np.ndarray:
    return tile if tile.ndim == 3 else np.repeat(tile[..., None], 3, axis=2)


def _tiles(parts: dict[str, np.ndarray], block: int, source: str) -> list[np.ndarray]:
    """Channel ``block``'s k tiles of ``source`` (patches or projections) as RGB in [0, 1], drawn as the report."""
    inside = parts["inside"][block].astype(bool)
    values = parts[source][block].astype(np.float32)
    return [_rgb(scaled_tile(values[r], inside[r], signed=source == "projections")) for r in range(len(values))]


def _mosaic(tiles: list[np.ndarray], columns: int = 3, gap: int = 1) -> np.ndarray:
    """Tiles ``(h, w, 3)`` in rows of ``columns`` on white."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    out = np.ones((rows * (h + gap) - gap, min(len(tiles), columns) * (w + gap) - gap, 3))
    for i, tile in enumerate(tiles):
        y, x = (i // columns) * (h + gap), (i % columns) * (w + gap)
        out[y : y + h, x : x + w] = tile
    return out


def top_impl(reader: RunReader, *, layer: str) -> dict[str, Any]:
    """Per recorded channel of ``layer``: its k strongest images as 3-per-row mosaics of patches and projections.

    Returns:
        ``{"layer", "k", "field", "projections": bool, "units": [{channel, scores, indices, patches,
        projections}]}``: ``patches``/``projections`` are PNG data URIs (projections None when not recorded),
        ``scores`` the spatial maxima (best first), ``indices`` the images' positions in the data.

    Raises:
        UnknownNameError: the run holds no top activations of ``layer``.
    """
    info, parts = _top(reader, layer)
    has_projections = "projections" in parts
    units = []
    for b, channel in enumerate(info["channels"]):
        units.append({
            "channel": int(channel), "scores": json_floats(parts["scores"][b]), "indices": parts["indices"][b].tolist(),
            "patches": image_uri(_mosaic(_tiles(parts, b, "patches"))),
            "projections": image_uri(_mosaic(_tiles(parts, b, "projections"))) if has_projections else None,
        })  # fmt: skip
    return {"layer": layer, "k": int(info["k"]), "field": info["field"], "projections": has_projections, "units": units}


def unit_impl(reader: RunReader, *, layer: str, channel: int) -> dict[str, Any]:
    """One channel of ``layer`` enlarged: each of its k images' patch and projection, score and image index.

    Returns:
        ``{"layer", "channel", "k", "field", "scores", "indices", "inside", "patches": [uri], "projections":
        [uri] | None}``; ``inside`` is the share of each patch that lies within the image.

    Raises:
        UnknownNameError: the run holds no top activations of ``layer``.
        NotFound: ``channel`` is not one of the layer's recorded channels.
    """
    info, parts = _top(reader, layer)
    channels = [int(c) for c in info["channels"]]
    if channel not in channels:
        raise NotFound(f"channel {channel} of {layer!r} has no recorded top activations; recorded channels: {channels}")
    b = channels.index(channel)
    has_projections = "projections" in parts
    return {
        "layer": layer,
        "channel": channel,
        "k": int(info["k"]),
        "field": info["field"],
        "scores": json_floats(parts["scores"][b]),
        "indices": parts["indices"][b].tolist(),
        "inside": json_floats(parts["inside"][b].reshape(len(parts["inside"][b]), -1).mean(1)),
        "patches": [image_uri(t) for t in _tiles(parts, b, "patches")],
        "projections": [image_uri(t) for t in _tiles(parts, b, "projections")] if has_projections else None,
    }


def filters_impl(reader: RunReader, *, normalize: str = "") -> dict[str, Any]:
    """The first convolution's filters as the report's tile figure (``normalize``: recorded choice by default).

    Returns:
        ``{"layer", "normalize", "shape", "min", "max", "figure"}``: ``figure`` a PNG data URI.

    Raises:
        NotFound: the run recorded no filters.
        ValueError: ``normalize`` is not ``shared`` or ``per_filter``.
    """
    spec = reader.meta().get(f"{_P}/filters")
    if spec is None:
        raise NotFound("this run recorded no filters (the model has no convolution, or none was asked for)")
    chosen = normalize or spec["normalize"]
    if chosen not in _NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {', '.join(_NORMALIZATIONS)} (or empty for the recorded one), got {normalize!r}"
        )
    weights = reader.tensor(f"{_P}/filters", 0)
    figure = png_uri(
        lambda path: plots.filter_grid(weights, path, normalize=chosen, title=f"Filters of {spec['layer']}")
    )
    return {"layer": spec["layer"], "normalize": chosen, "shape": list(weights.shape),
            "min": json_floats(weights.min()), "max": json_floats(weights.max()), "figure": figure}  # fmt: skip


def occlusion_impl(reader: RunReader, *, index: int = 0) -> dict[str, Any]:
    """Occlusion study ``index`` (Zeiler & Fergus Fig. 7) as the report's figure, with its settings.

    Returns:
        ``{"index", "count", "layer", "channel", "target", "target_name", "window", "stride", "baseline",
        "worst", "lowest_probability", "figure"}``: ``lowest_probability`` the correct class's lowest
        probability over the square's positions.

    Raises:
        IndexError: no study ``index`` (the message gives the valid range).
    """
    meta = reader.meta()
    count = int(meta.get(f"{_P}/occlusion") or 0)
    if not 0 <= index < count:
        valid = f"0..{count - 1}" if count else "none: this run holds no occlusion study"
        raise IndexError(f"no occlusion study {index}; valid indices: {valid}")
    base = f"{_P}/occlusion/{index}"
    info = meta[base]
    parts = {p: reader.tensor(f"{base}/{p}", 0) for p in _OCCLUSION_PARTS}

    def draw(path: Path) -> Path:
        return plots.occlusion_figure(
            parts["image"], parts["projection"], parts["activation"], parts["probability"], parts["top_class"], path,
            worst=tuple(info["worst"]), window=info["window"], stride=info["stride"], channel=info["channel"],
            layer=info["layer"], target=info["target"], class_names=info["class_names"], baseline=info["baseline"],
        )  # fmt: skip

    figure = png_uri(draw)
    return {
        "index": index,
        "count": count,
        **{key: info[key] for key in ("layer", "channel", "target", "window", "stride", "baseline", "worst")},
        "target_name": _class_name(info["class_names"], info["target"]),
        "lowest_probability": json_floats(np.nanmin(parts["probability"])),
        "figure": figure,
    }


def invariance_impl(reader: RunReader, *, transform: str) -> dict[str, Any]:
    """The invariance curves of one transform (Zeiler & Fergus Fig. 5), one curve per image.

    Returns:
        ``{"transform", "unit", "values", "layers", "distances": [layer][image][value], "probability":
        [image][value], "wrong": [image][value] (prediction differs from the label), "labels", "label_names"}``.

    Raises:
        UnknownNameError: the run holds no curves of ``transform``.
    """
    meta = reader.meta()
    transforms = list(meta.get(f"{_P}/invariance") or [])
    if transform not in transforms:
        raise UnknownNameError("invariance transform", transform, transforms)
    base = f"{_P}/invariance/{transform}"
    info = meta[base]
    names = info.get("class_names") or []
    labels = reader.tensor(f"{base}/labels", 0).astype(int).tolist()
    predicted = reader.tensor(f"{base}/predicted", 0)  # (values, images)
    return {
        "transform": transform,
        "unit": _TRANSFORM_UNITS.get(transform, transform),
        "values": json_floats(reader.tensor(f"{base}/values", 0)),
        "layers": list(info["layers"]),
        "distances": [json_floats(reader.tensor(f"{base}/distance/{i}", 0).T) for i in range(len(info["layers"]))],
        "probability": json_floats(reader.tensor(f"{base}/probability", 0).T),
        "wrong": (predicted != np.asarray(labels)[None, :]).T.tolist(),
        "labels": labels,
        "label_names": [_class_name(names, k) for k in labels],
    }


PANEL = Panel(
    name="layers",
    title="Layers",
    available=lambda reader: f"{_P}/top" in reader.meta(),
    routes=(
        Route("index", index_impl),
        Route("maps", maps_impl),
        Route("top", top_impl),
        Route("unit", unit_impl),
        Route("filters", filters_impl),
        Route("occlusion", occlusion_impl),
        Route("invariance", invariance_impl),
    ),
)
