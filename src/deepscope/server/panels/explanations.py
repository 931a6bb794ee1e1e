"""Dataset explanations panel: what ``DatasetExplanation.record`` stored, and any item's map read from its shards.

Per recorded explanation ``<name>`` (meta ``explain_dataset/<name>``): the summary (method, layer, target,
coverage, shards, backend, time, throughput, bytes) with the failed shards; the mean map of each explained
class (``explain_dataset/<name>/class_means``, each map's ``|m|`` min–max scaled to [0, 1] before averaging,
drawn on one shared [0, 1] scale so classes compare); the recorded examples (input and overlay, filterable
by class); and, while the shard folder named in the meta still holds this explanation, one item's map by
its position, read from its ``shard-NNNNN.npz``. Shard files are found only through that folder's own
manifest (``explanations.json``); a position only picks one of its entries and never enters a path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deepscope._attribution_plots import MAGNITUDE_CMAP, as_rgb, overlay
from deepscope._explanation_files import MANIFEST, SHARD_FILE, class_label, scaled_magnitude
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.server._figures import image_uri, json_floats
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["MAX_EXAMPLES", "PANEL", "classes_impl", "examples_impl", "index_impl", "item_impl"]

_P = TAGS.EXPLAIN_DATASET
_SAME = ("method", "items", "map_shape", "dtype")  # what a folder's manifest must share with the recorded summary
MAX_EXAMPLES = 96  # examples per answer; a class filter shows the others


def _names(meta: dict[str, Any]) -> list[str]:
    return sorted(
        key[len(_P) + 1 :] for key, value in meta.items() if key.startswith(f"{_P}/") and isinstance(value, dict)
    )


def _info(meta: dict[str, Any], name: str) -> dict[str, Any]:
    names = _names(meta)
    if name not in names:
        raise UnknownNameError("dataset explanation", name, names)
    return meta[f"{_P}/{name}"]


def _shards(info: dict[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    """The shard folder and its manifest's shards, when the folder still holds this explanation.

    Raises:
        LookupError: the folder is gone, holds another explanation, or its manifest names an odd file (404).
    """
    folder = Path(str(info.get("path") or ""))
    if not folder.is_absolute():
        raise LookupError("this explanation recorded no shard folder, so single maps cannot be read")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise LookupError(f"the shard folder {folder} no longer holds a readable {MANIFEST}") from error
    changed = [key for key in _SAME if manifest.get(key) != info.get(key)]
    if changed:
        raise LookupError(f"the shard folder {folder} now holds another explanation (its {', '.join(changed)} differ)")
    shards = []
    for entry in manifest.get("shards") or []:
        file = str(entry.get("file", ""))
        if not SHARD_FILE.fullmatch(file):
            raise LookupError(f"{folder / MANIFEST} names an unexpected shard file {file!r}")
        shards.append({"index": int(entry["index"]), "start": int(entry["start"]), "stop": int(entry["stop"]),
                       "file": file})  # fmt: skip
    return folder, shards


def _folder_state(info: dict[str, Any]) -> dict[str, Any]:
    """``{"path", "available", "reason"}``: whether single maps can be read from the shard folder."""
    try:
        _shards(info)
    except LookupError as error:
        return {"path": str(info.get("path") or ""), "available": False, "reason": str(error)}
    return {"path": str(info["path"]), "available": True, "reason": None}


def _failed(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"shard": int(f["shard"]), "start": int(f["start"]), "stop": int(f["stop"]), "error": str(f.get("error", "")),
         "attempts": int(f.get("attempts", 0))}
        for f in info.get("failed") or []
    ]  # fmt: skip


def _params(params: Any) -> list[list[str]]:
    """The method's parameters as ``[name, text]`` pairs (strings as they are, the rest as JSON)."""
    items = params.items() if isinstance(params, dict) else ()
    return [[str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)] for k, v in items]


def _summary(reader: RunReader, name: str, info: dict[str, Any]) -> dict[str, Any]:
    examples = f"{_P}/{name}/examples/positions"
    counts = {key: int(info.get(key) or 0) for key in ("items", "covered", "shards", "bytes")}
    texts = {key: str(info.get(key) or "") for key in ("method", "target", "backend", "dtype")}
    return {
        "name": name,
        **texts,
        **counts,
        "layer": info.get("layer"),
        "failed": _failed(info),
        "seconds": json_floats(info.get("seconds", float("nan"))),
        "items_per_second": json_floats(info.get("items_per_second", float("nan"))),
        "params": _params(info.get("params")),
        "map_shape": [int(s) for s in info.get("map_shape") or []],
        "examples": int(reader.tensor(examples, 0).shape[0]) if examples in set(reader.tensor_tags()) else 0,
        "folder": _folder_state(info),
    }


def index_impl(reader: RunReader) -> dict[str, Any]:
    """Every recorded dataset explanation's summary, by name.

    Returns:
        ``{"explanations": [{name, method, layer, target, items, covered, shards, failed: [{shard, start, stop,
        error, attempts}], backend, seconds, items_per_second, dtype, bytes, params: [[name, text]], map_shape,
        examples, folder: {path, available, reason}}]}``; ``folder.available`` says whether single maps can be read.
    """
    meta = reader.meta()
    return {"explanations": [_summary(reader, name, meta[f"{_P}/{name}"]) for name in _names(meta)]}


def classes_impl(reader: RunReader, *, name: str) -> dict[str, Any]:
    """Each explained class's mean map as an image and its count, on one ``inferno`` scale from 0 to the largest mean.

    Returns:
        ``{"name", "vmax", "classes": [{class, label, count, mean}]}`` in class order (``-1``: a custom target);
        ``vmax`` is the top of the shared colour scale (the report's figure uses the same).

    Raises:
        UnknownNameError: no such explanation in the run (404).
    """
    info = _info(reader.meta(), name)
    base = f"{_P}/{name}"
    classes = reader.tensor(f"{base}/classes", 0).astype(np.int64)  # (K,)
    counts = reader.tensor(f"{base}/class_counts", 0).astype(np.int64)  # (K,)
    means = reader.tensor(f"{base}/class_means", 0).astype(np.float32)  # (K, H, W) in [0, 1]; (K, L): a strip each
    names = info.get("class_names")
    top = float(means.max()) if means.size and means.max() > 0 else 1.0  # means of [0, 1] maps sit well below 1
    tiles = [
        {"class": int(c), "label": class_label(int(c), names), "count": int(n),
         "mean": image_uri(np.atleast_2d(mean), cmap=MAGNITUDE_CMAP, vmin=0.0, vmax=top)}
        for c, n, mean in zip(classes, counts, means, strict=True)
    ]  # fmt: skip
    return {"name": name, "vmax": top, "classes": tiles}


def _overlay_uri(image: np.ndarray, heat: np.ndarray) -> str | None:
    """The report's magnitude blend of a [0, 1] map over its input; None when their sizes differ."""
    return image_uri(overlay(image, heat, alpha=0.6)) if heat.shape == image.shape[:2] else None


def examples_impl(reader: RunReader, *, name: str, cls: int | None = None) -> dict[str, Any]:
    """The recorded examples (each input and its map over it), all or those explaining class ``cls``.

    Returns:
        ``{"name", "cls", "total", "classes": [{class, label, count}], "examples": [{position, class, label, image,
        map, overlay}]}``: ``classes`` are the explained classes with their number of examples (0 for some),
        ``total`` the matching examples, of which at most :data:`MAX_EXAMPLES` are sent.

    Raises:
        UnknownNameError: no such explanation (404). LookupError: ``cls`` is not an explained class (404).
    """
    info = _info(reader.meta(), name)
    base = f"{_P}/{name}"
    tags = set(reader.tensor_tags())
    recorded = f"{base}/examples/positions" in tags
    positions = reader.tensor(f"{base}/examples/positions", 0).astype(np.int64) if recorded else np.zeros(0, np.int64)
    targets = reader.tensor(f"{base}/examples/targets", 0).astype(np.int64) if recorded else positions  # (M,)
    explained = set(reader.tensor(f"{base}/classes", 0).tolist()) | set(targets.tolist())
    if cls is not None and cls not in explained:
        valid = ", ".join(str(c) for c in sorted(explained)) or "none"
        raise LookupError(f"class {cls} is not explained in {name!r}; explained classes: {valid}")
    names = info.get("class_names")
    classes = [
        {"class": c, "label": class_label(c, names), "count": int((targets == c).sum())} for c in sorted(explained)
    ]
    rows = np.flatnonzero(targets == cls) if cls is not None else np.arange(len(targets))
    shown = rows[:MAX_EXAMPLES]
    examples = []
    if shown.size:
        inputs = as_rgb(reader.tensor(f"{base}/examples/inputs", 0)[shown])  # (S, H, W, 3) in [0, 1], per image
        maps = reader.tensor(f"{base}/examples/maps", 0)[shown].astype(np.float32)  # (S, H, W) in [0, 1]
        for i, rgb, heat in zip(shown, inputs, maps, strict=True):
            examples.append(
                {"position": int(positions[i]), "class": int(targets[i]), "label": class_label(int(targets[i]), names),
                 "image": image_uri(rgb), "map": image_uri(heat, cmap=MAGNITUDE_CMAP, vmin=0.0, vmax=1.0),
                 "overlay": _overlay_uri(rgb, heat)}
            )  # fmt: skip
    return {"name": name, "cls": cls, "total": len(rows), "classes": classes, "examples": examples}


def _covering(shards: list[dict[str, Any]], position: int, folder: Path) -> dict[str, Any]:
    for shard in shards:
        if shard["start"] <= position < shard["stop"]:
            return shard
    raise LookupError(f"no shard in {folder} holds item {position}")


def _read(folder: Path, shard: dict[str, Any], position: int) -> tuple[np.ndarray, int, float]:
    """Item ``position``'s stored map, explained class and score from its shard file (inside ``folder`` only)."""
    path = (folder / shard["file"]).resolve()
    if path.parent != folder.resolve() or not path.is_file():
        raise LookupError(f"shard file {shard['file']} is missing from {folder}")
    with np.load(path, allow_pickle=False) as arrays:
        stored = arrays["positions"]
        row = position - shard["start"]
        if row >= len(stored) or int(stored[row]) != position:
            raise LookupError(f"{shard['file']} does not hold item {position} where its manifest says")
        return arrays["maps"][row].astype(np.float64), int(arrays["targets"][row]), float(arrays["scores"][row])


def item_impl(reader: RunReader, *, name: str, position: int) -> dict[str, Any]:
    """Item ``position``'s map, read from the shard that holds it.

    A per-channel map ``(C, H, W)`` is summed over channels (signed) into one spatial map first.

    Returns:
        ``{"name", "position", "shard", "file", "class", "label", "score", "shape", "min", "max", "map",
        "image", "overlay"}``: ``shape`` as stored, ``min``/``max`` of the spatial map, ``map`` its ``|m|`` scaled
        to [0, 1] as an ``inferno`` image; ``image`` and ``overlay`` (else None) when the item is a recorded example.

    Raises:
        UnknownNameError: no such explanation (404). ValueError: ``position`` is not an integer in range (400).
        LookupError: the item's shard failed, or the shard folder no longer holds this explanation (404).
    """
    meta = reader.meta()
    info = _info(meta, name)
    items = int(info.get("items", 0))
    if isinstance(position, bool) or not isinstance(position, int | np.integer):
        raise ValueError(f"position must be an integer, got {position!r}")
    if not 0 <= position < items:
        raise ValueError(f"position must be between 0 and {items - 1} (the dataset has {items} items), got {position}")
    position = int(position)
    for failure in _failed(info):
        if failure["start"] <= position < failure["stop"]:
            raise LookupError(
                f"item {position} has no map: shard {failure['shard']} (items {failure['start']}–{failure['stop'] - 1})"
                f" failed after {failure['attempts']} attempt(s): {failure['error']}"
            )
    folder, shards = _shards(info)
    shard = _covering(shards, position, folder)
    stored, cls, score = _read(folder, shard, position)
    spatial = stored.sum(0) if stored.ndim == 3 else stored  # (H, W), or (L,) for a vector input
    heat = scaled_magnitude(np.atleast_2d(spatial)[None])[0]  # (H, W) or (1, L)
    image = overlaid = None
    base = f"{_P}/{name}/examples"
    if f"{base}/positions" in set(reader.tensor_tags()):
        hits = np.flatnonzero(reader.tensor(f"{base}/positions", 0) == position)
        if hits.size:
            rgb = as_rgb(reader.tensor(f"{base}/inputs", 0)[hits[:1]])[0]
            image, overlaid = image_uri(rgb), _overlay_uri(rgb, heat)
    return {
        "name": name, "position": position, "shard": shard["index"], "file": shard["file"], "class": cls,
        "label": class_label(cls, info.get("class_names")), "score": json_floats(score), "shape": list(stored.shape),
        "min": json_floats(spatial.min()), "max": json_floats(spatial.max()),
        "map": image_uri(heat, cmap=MAGNITUDE_CMAP, vmin=0.0, vmax=1.0), "image": image, "overlay": overlaid,
    }  # fmt: skip


PANEL = Panel(
    name="explanations",
    title="Dataset explanations",
    available=lambda reader: bool(_names(reader.meta())),
    routes=(
        Route("index", index_impl),
        Route("classes", classes_impl),
        Route("examples", examples_impl),
        Route("item", item_impl),
    ),
)
