"""Attributions panel: what ``Comparison.record`` and ``TokenAttribution.record`` stored, as the report shows it.

Image runs get a gallery of one method's maps over every input (the report's overlay colouring:
``inferno`` for magnitudes, ``RdBu_r`` centred on 0 for signed maps), every method on one input,
a map's raw values for a Plotly heat map, the faithfulness table with a "which map to trust"
ranking, and the sanity check's randomisation curves. Text runs get their tokens with the report's
highlight colours. Images travel as PNG data URIs; curves and map values as JSON numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from deepscope._attribution_plots import MAGNITUDE_CMAP, SIGNED_CMAP, as_rgb, overlay
from deepscope._report_attribution import METRIC_HELP, attribution_notes, cpu_power
from deepscope._tags import TAGS
from deepscope._text_plots import AGAINST_COLOR, FOR_COLOR
from deepscope.errors import UnknownNameError
from deepscope.footprint import estimate
from deepscope.server._figures import image_uri, json_floats
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["MAX_COUNT", "PANEL", "example_impl", "gallery_impl", "index_impl", "sanity_impl", "scores_impl",
           "text_impl"]  # fmt: skip

_P, _T = TAGS.ATTRIBUTION, TAGS.TEXT
MAX_COUNT = 64  # inputs per gallery page
# per-example score tensors: key -> (label, which way is better)
_SCORES = {
    "deletion_auc": ("deletion AUC", "lower"),
    "insertion_auc": ("insertion AUC", "higher"),
    "pointing_game": ("pointing game", "higher"),
    "energy_in_mask": ("energy in mask", "higher"),
}
_COLUMNS = {**_SCORES, "sanity": ("sanity", None), "seconds": ("time (s)", "lower"),
            "energy_wh": ("energy (Wh, est.)", "lower")}  # fmt: skip


def _methods(meta: dict[str, Any]) -> list[str]:
    methods = meta.get(f"{_P}/methods")
    if not methods:
        raise LookupError("this run holds no attribution maps (deepscope.compare(...).record(run) writes them)")
    return [str(m) for m in methods]


def _method(meta: dict[str, Any], method: str) -> str:
    methods = _methods(meta)
    if method not in methods:
        raise UnknownNameError("attribution method", method, methods)
    return method


def _images(reader: RunReader) -> np.ndarray:
    return as_rgb(reader.tensor(f"{_P}/images", 0).astype(np.float32))  # (N, H, W, 3) in [0, 1], as the report


def _maps(reader: RunReader, method: str) -> np.ndarray:
    return reader.tensor(f"{_P}/{method}/maps", 0).astype(np.float32)  # (N, H, W), normalised at record time


def _check_index(index: int, n: int) -> int:
    if not 0 <= index < n:
        raise ValueError(f"index must be between 0 and {n - 1} (the run holds {n} inputs), got {index}")
    return index


def _captions(meta: dict[str, Any], n: int) -> list[str]:
    given = [str(c) for c in meta.get(f"{_P}/captions") or []]
    return [given[i] if i < len(given) else f"input {i}" for i in range(n)]


def _target(meta: dict[str, Any], method: str, i: int) -> int | str | None:
    target = meta.get(f"{_P}/{method}/target")
    if isinstance(target, list):
        return target[i] if i < len(target) and isinstance(target[i], (int, str)) else None
    return None if target is None else str(target)


def _example_scores(reader: RunReader, method: str) -> dict[str, list[float | None]]:
    tags = set(reader.tensor_tags())
    return {k: json_floats(reader.tensor(f"{_P}/{method}/{k}", 0)) for k in _SCORES if f"{_P}/{method}/{k}" in tags}


def _colorscale(signed: bool) -> list[list[Any]]:
    """The map's colours as a Plotly colour scale over [zmin, zmax] (11 stops of the report's colour map)."""
    from matplotlib import colormaps

    cmap = colormaps[SIGNED_CMAP if signed else MAGNITUDE_CMAP]
    stops = np.linspace(0.0, 1.0, 11)
    return [[float(t), "rgb({},{},{})".format(*(round(255 * c) for c in cmap(t)[:3]))] for t in stops]


def _overlay_uri(image: np.ndarray, heat: np.ndarray, signed: bool) -> str:
    """The report's colouring: magnitudes blended at 0.6, signed maps with opacity 0.9·|map|."""
    return image_uri(overlay(image, heat, signed=signed, alpha=0.9 if signed else 0.6))


def index_impl(reader: RunReader) -> dict[str, Any]:
    """What the run holds: ``{"methods": [{name, signed}], "examples", "captions", "notes", "sanity", "text"}``."""
    meta = reader.meta()
    methods = [str(m) for m in meta.get(f"{_P}/methods") or []]
    n = int(reader.tensor(f"{_P}/images", 0).shape[0]) if methods else 0
    notes = meta.get(f"{_P}/notes") or {}
    notes = [str(v) for v in (notes.values() if isinstance(notes, dict) else notes)]
    return dict(methods=[{"name": m, "signed": bool(meta.get(f"{_P}/{m}/signed"))} for m in methods], examples=n,
                captions=_captions(meta, n), notes=notes, sanity=any(f"{_P}/{m}/sanity" in meta for m in methods),
                text=f"{_T}/tokens" in meta)  # fmt: skip


def gallery_impl(reader: RunReader, *, method: str, start: int = 0, count: int = 32) -> dict[str, Any]:
    """One method's maps over inputs ``start .. start + count - 1``: each input, its overlay and its scores.

    Returns:
        ``{"method", "signed", "total", "start", "colorscale", "labels": {metric: label}, "examples": [{index,
        caption, target, image, overlay, scores: {metric: value}}]}``.

    Raises:
        UnknownNameError: no such method in the run (404). ValueError: ``start`` or ``count`` out of range (400).
    """
    meta = reader.meta()
    method = _method(meta, method)
    images, maps = _images(reader), _maps(reader, method)
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be between 1 and {MAX_COUNT}, got {count}")
    n, signed = images.shape[0], bool(meta.get(f"{_P}/{method}/signed"))
    scores, captions = _example_scores(reader, method), _captions(meta, n)
    examples = [
        dict(index=i, caption=captions[i], target=_target(meta, method, i), image=image_uri(images[i]),
             overlay=_overlay_uri(images[i], maps[i], signed), scores={k: v[i] for k, v in scores.items()})
        for i in range(_check_index(start, n), min(n, start + count))
    ]  # fmt: skip
    labels = {k: _SCORES[k][0] for k in scores}
    return dict(method=method, signed=signed, total=n, start=start, colorscale=_colorscale(signed), labels=labels,
                examples=examples)  # fmt: skip


def example_impl(reader: RunReader, *, index: int, method: str) -> dict[str, Any]:
    """Every method's map over input ``index``, and ``method``'s map values for an interactive heat map.

    Each method comes with the report's note (``"del 0.30 · ins 0.74 · hit"``); the values are as stored
    ([0, 1] magnitudes or [-1, 1] signed).

    Returns:
        ``{"index", "caption", "image", "methods": [{method, signed, overlay, note, target}],
        "map": {method, signed, z: [[...]] (H rows), zmin, zmax, colorscale}}``.
    """
    meta = reader.meta()
    chosen = _method(meta, method)
    images = _images(reader)
    index = _check_index(index, images.shape[0])
    tiles, heat = [], {}
    for name in _methods(meta):
        signed, maps = bool(meta.get(f"{_P}/{name}/signed")), _maps(reader, name)
        note = attribution_notes(reader, name, maps.shape[0])[index]
        tiles.append(dict(method=name, signed=signed, overlay=_overlay_uri(images[index], maps[index], signed),
                          note=note, target=_target(meta, name, index)))  # fmt: skip
        if name == chosen:
            heat = dict(method=name, signed=signed, z=json_floats(maps[index]), zmin=-1.0 if signed else 0.0,
                        zmax=1.0, colorscale=_colorscale(signed))  # fmt: skip
    caption = _captions(meta, images.shape[0])[index]
    return dict(index=index, caption=caption, image=image_uri(images[index]), methods=tiles, map=heat)


def _number(value: Any) -> float | str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    return None if value is None else str(value)


def _trust_order(rows: list[dict[str, Any]], keys: list[str]) -> list[float | None]:
    """Each method's mean rank over the faithfulness metrics it has (1 = best; ties share their mean rank)."""
    ranks: list[list[float]] = [[] for _ in rows]
    for key in keys:
        have = [(i, row[key]) for i, row in enumerate(rows) if isinstance(row.get(key), float)]
        sign = 1.0 if _SCORES[key][1] == "lower" else -1.0
        for i, value in have:
            better = sum(sign * v < sign * value for _, v in have)
            equal = sum(v == value for _, v in have)
            ranks[i].append(better + (equal + 1) / 2)
    return [float(np.mean(r)) if r else None for r in ranks]


def scores_impl(reader: RunReader) -> dict[str, Any]:
    """The report's faithfulness table, with each method's rank in "which map to trust" order.

    Methods are ranked by their mean rank over the metrics present (deletion AUC: lower is better;
    insertion AUC, pointing game, energy in mask: higher); a failed sanity check puts a method after
    every method that passed or was not checked.

    Returns:
        ``{"columns": [{key, label, better, help}], "rows": [{method, <key>: value, "mean_rank", "rank"}],
        "order": [methods, most trustworthy first], "help": the report's sentence}``.
    """
    meta = reader.meta()
    _methods(meta)
    table = [dict(row) for row in meta.get(f"{_P}/table") or []]
    report_columns = ("deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask", "sanity", "seconds")
    keys = [k for k in report_columns if any(row.get(k) is not None for row in table)]
    rows = [{"method": str(row.get("method")), **{k: _number(row.get(k)) for k in keys}} for row in table]
    if "seconds" in keys:  # what the explanations cost, as the report estimates it
        power = cpu_power(meta)
        for row, raw in zip(rows, table, strict=True):
            row["energy_wh"] = json_floats(1000 * estimate(float(raw["seconds"]), power_w=power).energy_kwh)
        keys.append("energy_wh")
    metric_keys = [k for k in keys if k in _SCORES]
    for row, mean in zip(rows, _trust_order(rows, metric_keys), strict=True):
        row["mean_rank"] = mean
    order = sorted(
        range(len(rows)),
        key=lambda i: (rows[i].get("sanity") == "fail", rows[i]["mean_rank"] is None, rows[i]["mean_rank"] or 0.0, i),
    )
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank
    columns = [{"key": k, "label": _COLUMNS[k][0], "better": _COLUMNS[k][1], "help": METRIC_HELP.get(k)} for k in keys]
    help_text = "; ".join(METRIC_HELP[k] for k in keys if k in METRIC_HELP)
    help_text = f"Which map to trust: {help_text}." if help_text else ""
    return dict(columns=columns, rows=rows, order=[rows[i]["method"] for i in order], help=help_text)


def sanity_impl(reader: RunReader) -> dict[str, Any]:
    """The cascading-randomisation curves (Adebayo et al. 2018): similarity to the intact map per layer randomised.

    Returns:
        ``{"measure", "threshold", "measures", "curves": [{method, passed, layers, x: ["intact", "+ fc", ...],
        "values": {measure: [1, mean over inputs per step]}, "per_input": {measure: [[...], ...]}}]}``.
    """
    meta = reader.meta()
    tags = set(reader.tensor_tags())
    curves, setting = [], None
    for method in _methods(meta):
        check = meta.get(f"{_P}/{method}/sanity")
        if not check:
            continue
        setting = setting or check
        measures = sorted(t.rsplit("/", 1)[1] for t in tags if t.startswith(f"{_P}/{method}/sanity/"))
        values, per_input = {}, {}
        for measure in measures:
            table = reader.tensor(f"{_P}/{method}/sanity/{measure}", 0).astype(np.float64)  # (L, N)
            with warnings.catch_warnings():  # an all-NaN row (no score for any input) stays NaN, sent as None
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(table, axis=1)
            values[measure] = json_floats(np.concatenate([[1.0], mean]))  # the intact model first, as the report
            per_input[measure] = json_floats(np.concatenate([np.ones((1, table.shape[1])), table]))
        layers = [str(layer) for layer in check.get("layers", [])]
        x = ["intact", *(f"+ {name}" for name in layers)]
        curves.append(dict(method=method, passed=bool(check.get("passed")), layers=layers, x=x, values=values,
                           per_input=per_input))  # fmt: skip
    if setting is None:
        raise LookupError("this run holds no sanity check (compare(..., metrics=['sanity']) runs one)")
    measures = sorted({m for c in curves for m in c["values"]})
    return dict(measure=str(setting.get("measure")), threshold=_number(setting.get("threshold")), measures=measures,
                curves=curves, help=METRIC_HELP["sanity"])  # fmt: skip


def _background(score: float, peak: float) -> str:
    """The report's token highlight: red for the class, blue against, shade relative to the text's peak."""
    rgb = ",".join(str(round(255 * c)) for c in (FOR_COLOR if score > 0 else AGAINST_COLOR))
    return f"rgba({rgb},{abs(score) / peak if peak else 0.0:.2f})"


def text_impl(reader: RunReader) -> dict[str, Any]:
    """Token attributions: ``{"method", "texts": [{index, caption, peak, tokens: [{text, score, joined, ...}]}]}``.

    ``joined`` marks a WordPiece continuation (``##ing``: shown without its ``##``, glued to its word).
    """
    meta = reader.meta()
    if f"{_T}/tokens" not in meta:
        raise LookupError("this run holds no token attributions (deepscope.text.explain_text(...).record(run))")
    captions = [str(c) for c in meta.get(f"{_T}/captions") or []]
    texts = []
    for i, tokens in enumerate(meta[f"{_T}/tokens"]):
        scores = reader.tensor(f"{_T}/scores", i).astype(np.float64)
        finite = np.abs(scores[np.isfinite(scores)])
        peak = float(finite.max()) if finite.size else 0.0
        items = []
        for token, score in zip((str(t) for t in tokens), scores.tolist(), strict=True):
            joined = token.startswith("##")
            shade = _background(score if math.isfinite(score) else 0.0, peak)
            items.append(dict(text=token[2:] if joined else token, token=token, score=_number(score), joined=joined,
                              background=shade))  # fmt: skip
        texts.append(
            {"index": i, "caption": captions[i] if i < len(captions) else f"text {i}", "peak": peak, "tokens": items}
        )
    return {"method": str(meta.get(f"{_T}/method", "")), "texts": texts}


def _available(reader: RunReader) -> bool:
    meta = reader.meta()
    return bool(meta.get(f"{_P}/methods")) or f"{_T}/tokens" in meta


PANEL = Panel(
    name="attributions",
    title="Attributions",
    available=_available,
    routes=(
        Route("index", index_impl),
        Route("gallery", gallery_impl),
        Route("example", example_impl),
        Route("scores", scores_impl),
        Route("sanity", sanity_impl),
        Route("text", text_impl),
    ),
)
