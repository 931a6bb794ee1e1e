"""Attribution maps for a whole dataset, written as compressed shards: :func:`explain_dataset`.

Each shard of consecutive items is explained batch by batch with :func:`deepscope.explain` and
written as one ``shard-NNNNN.npz`` (DEFLATE-compressed: the items' positions, maps, explained
classes and scores), compressed where it was computed (on the Ray worker). A stochastic method
(SmoothGrad, RISE) draws from its shard's own generator, seeded by ``(seed, shard)``, so the maps
are the same on every backend and every run. ``explanations.json`` lists the shards, the items a
failed shard left out, the method and the versions; ``summary.npz`` holds the per-class mean map
(each map's ``|m|`` scaled to [0, 1] first), merged from the shards' sums. :class:`DatasetExplanation`
reads it all back, one shard at a time.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepscope._data import batches, labelled_batches
from deepscope._explanation_files import MANIFEST, SHARD_FILE, SUMMARY, scaled_magnitude, shard_file
from deepscope.attribution import ATTRIBUTIONS, explain
from deepscope.layers import LayerSpec, resolve_layer
from deepscope.repro import library_versions
from deepscope.scale._shards import Shard, plan, shard_seed, sized
from deepscope.scale.backends import Coverage, Ray, ShardFailure, resolve, run_shards

__all__ = ["DatasetExplanation", "ShardFile", "explain_dataset", "open_explanations"]

_FORMAT = 1
_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True, slots=True)
class ShardFile:
    """One written shard: its items ``start`` to ``stop - 1`` and its file (relative to the folder)."""

    index: int
    start: int
    stop: int
    file: str
    bytes: int


@dataclass(frozen=True, slots=True)
class DatasetExplanation:
    """The maps of a dataset, in a folder of shards (:func:`explain_dataset`, or :func:`open_explanations`).

    Attributes:
        path: the folder.
        method, layer, params: how the maps were made; ``target``: ``"predicted"``, ``"label"``, a class or
            ``"given"`` (one class per item).
        items: the dataset's size; ``coverage``: which items have maps (all, unless shards failed).
        map_shape: one item's map, ``(H, W)`` or ``(C, H, W)``; ``dtype``: as stored.
        shards: the shard files, in data order.
        class_means: explained class → the mean of its items' maps, each ``|m|`` min–max scaled first, ``(H, W)``.
        class_counts: explained class → items.
        seconds: the run's wall time (Ray's start included).
    """

    path: Path
    method: str
    layer: str | None
    target: str
    params: dict[str, Any]
    items: int
    coverage: Coverage
    map_shape: tuple[int, ...]
    dtype: str
    shards: tuple[ShardFile, ...]
    class_means: dict[int, np.ndarray] = field(default_factory=dict)
    class_counts: dict[int, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # how long the run took, Ray's start included

    def maps(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The maps of the items at ``positions`` (in that order), read from the shards that hold them.

        Raises:
            KeyError: a position that no written shard covers (out of range, or in a failed shard).
        """
        wanted = np.asarray(positions, np.int64).reshape(-1)
        out = np.empty((len(wanted), *self.map_shape), _DTYPES[self.dtype])
        starts = np.array([s.start for s in self.shards], np.int64)
        owner = np.searchsorted(starts, wanted, side="right") - 1
        for slot in np.unique(owner):
            rows = np.flatnonzero(owner == slot)
            shard = self.shards[slot] if slot >= 0 else None
            if shard is None or (wanted[rows] >= shard.stop).any():
                missing = wanted[rows][wanted[rows] >= (shard.stop if shard is not None else 0)]
                raise KeyError(f"no map for item(s) {missing[:10].tolist()}: {self.coverage.summary()}")
            with np.load(self.path / shard.file) as arrays:
                out[rows] = arrays["maps"][wanted[rows] - shard.start]
        return out

    def iter_shards(self) -> Iterator[dict[str, np.ndarray]]:
        """Each written shard's arrays (``positions``, ``maps``, ``targets``, ``scores``), in data order."""
        for shard in self.shards:
            with np.load(self.path / shard.file) as arrays:
                yield {name: arrays[name] for name in arrays.files}

    def record(
        self,
        run_dir: str | os.PathLike[str],
        *,
        data: Any = None,
        class_names: Sequence[str] | None = None,
        examples: int = 4,
        name: str = "explanations",
        overwrite: bool = False,
    ) -> Path:
        """Store the summary in a run for the report and the dashboard (the shards stay where they are).

        ``data`` (the explained data) adds ``examples`` inputs per explained class with their maps.
        """
        from deepscope.scale._record import record_explanations

        return record_explanations(
            self, Path(run_dir), data=data, class_names=class_names, examples=examples, name=name, overwrite=overwrite
        )

    def column(self, name: str) -> np.ndarray:
        """``positions``, ``targets`` or ``scores`` of every covered item, in data order (the maps stay on disk)."""
        if name not in ("positions", "targets", "scores"):
            raise ValueError(f"unknown column {name!r}; valid: 'positions', 'targets', 'scores' (maps: .maps())")
        parts = []
        for shard in self.shards:
            with np.load(self.path / shard.file) as arrays:
                parts.append(arrays[name])
        return np.concatenate(parts) if parts else np.zeros(0)


def explain_dataset(
    model: nn.Module,
    data: Any,
    method: str = "gradcam",
    *,
    out: str | os.PathLike[str],
    target: int | str | Sequence[int] | None = None,
    layer: LayerSpec | None = None,
    batch_size: int = 64,
    shard_size: int = 256,
    seed: int = 0,
    dtype: str = "float32",
    backend: str | Ray = "local",
    model_factory: Callable[[], nn.Module] | None = None,
    overwrite: bool = False,
    **params: Any,
) -> DatasetExplanation:
    """Explain every item of ``data`` with ``method`` and write the maps to ``out`` as compressed shards.

    Args:
        model: the network (left unchanged).
        data: a tensor ``(N, ...)``, an ``(inputs, labels)`` pair, a map-style dataset or an unshuffled
            ``DataLoader`` (items are found again by position).
        method: an attribution key (``"gradcam"``, ``"integrated_gradients"``, ``"rise"``…).
        out: the folder of shards (created; must be empty unless ``overwrite``).
        target: None (each item's predicted class), ``"label"`` (its true class; needs labelled data), one
            class for all, or one class per item.
        layer: for layer methods (CAM family); default: the last spatial layer.
        batch_size: items per :func:`deepscope.explain` call.
        shard_size: items per shard (one file, one unit of work, retry and seed).
        seed: the seed of every shard's generator, for stochastic methods.
        dtype: ``"float32"`` or ``"float16"`` (half the size; a map that does not fit raises).
        backend: ``"local"`` (shards one after the other here) or ``"ray"`` / :class:`Ray`.
        model_factory: with Ray, a function that builds the architecture on each worker (the weights are sent).
        overwrite: replace what ``out`` holds.
        **params: the method's parameters (``n_steps=64``…); not ``generator`` (use ``seed``).

    Returns:
        The :class:`DatasetExplanation`; its ``coverage`` lists a shard that failed on Ray after its retries.
    """
    if "generator" in params:
        raise ValueError("explain_dataset seeds each shard's generator from seed=: pass seed=, not generator=")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(method, str):
        raise TypeError(f"method must be an attribution key (str), got {type(method).__name__}: shards rebuild it")
    ATTRIBUTIONS.get(method)  # an unknown key raises here, with the close matches and the valid keys
    config = resolve(backend)
    size = sized(data)
    layer_name = resolve_layer(model, layer)[0] if layer is not None else None
    targets = _targets(target, size)
    folder = _prepare(Path(out), overwrite)
    settings = _Settings(method, params, targets, layer_name, batch_size, seed, dtype)
    shards = plan(size, shard_size)
    started = time.time()
    done, coverage = run_shards(
        partial(_explain_work, settings=settings), model, data, shards, backend=config, model_factory=model_factory,
        label="explain dataset", keep=partial(_write_shard, folder),
    )  # fmt: skip
    files, sums, counts, first = [], {}, {}, None
    for _, (file, result) in done:
        files.append(file)
        first = first or result
        for cls, total in result.sums.items():
            sums[cls] = sums.get(cls, 0) + total
            counts[cls] = counts.get(cls, 0) + result.counts[cls]
    assert first is not None  # run_shards raises when every shard failed
    means = {cls: (sums[cls] / counts[cls]).astype(np.float32) for cls in sorted(sums)}
    _write_summary(folder, means, counts)
    manifest = {
        "format": _FORMAT, "method": method, "layer": first.layer, "target": _target_label(target),
        "params": first.params, "items": size, "map_shape": list(first.map_shape), "dtype": dtype,
        "batch_size": batch_size, "shard_size": shard_size, "seed": seed, "backend": coverage.backend,
        "seconds": round(time.time() - started, 3),
        "shards": [_fields(f) for f in files], "failed": [_fields(f) for f in coverage.failed],
        "retried": list(coverage.retried),
        "versions": library_versions(),
    }  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return open_explanations(folder)


def open_explanations(path: str | os.PathLike[str]) -> DatasetExplanation:
    """Read back a folder written by :func:`explain_dataset`."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a folder written by explain_dataset")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{folder / MANIFEST} has format {manifest.get('format')!r}; this deepscope reads {_FORMAT}")
    failed = tuple(ShardFailure(**f) for f in manifest["failed"])
    shards = len(manifest["shards"]) + len(failed)
    coverage = Coverage(manifest["items"], manifest["backend"], shards, failed, tuple(manifest.get("retried", ())))
    means, counts = {}, {}
    with np.load(folder / SUMMARY) as summary:
        for cls, count, mean in zip(summary["classes"], summary["counts"], summary["means"], strict=True):
            means[int(cls)], counts[int(cls)] = mean, int(count)
    return DatasetExplanation(
        folder, manifest["method"], manifest["layer"], manifest["target"], manifest["params"], manifest["items"],
        coverage, tuple(manifest["map_shape"]), manifest["dtype"], tuple(ShardFile(**s) for s in manifest["shards"]),
        means, counts, manifest["versions"], manifest["seconds"],
    )  # fmt: skip


def _fields(record: Any) -> dict[str, Any]:
    """A slotted dataclass as a dict (for the manifest)."""
    return {name: getattr(record, name) for name in record.__slots__}


@dataclass(frozen=True, slots=True)
class _Settings:
    method: str
    params: dict[str, Any]
    targets: int | str | np.ndarray | None  # None, a class, "label", or one class per item
    layer: str | None
    batch_size: int
    seed: int
    dtype: str


@dataclass(frozen=True, slots=True)
class _Explained:
    """What a shard sends back: its compressed file, and its share of the per-class sums."""

    payload: bytes
    sums: dict[int, np.ndarray]
    counts: dict[int, int]
    map_shape: tuple[int, ...]
    layer: str | None
    params: dict[str, Any]  # JSON-safe: a Ray worker pickles it, and torch 2.3 cannot pickle a generator


def _explain_work(model: nn.Module, items: Any, shard: Shard, *, settings: _Settings) -> _Explained:
    """Explain one shard's items in batches; its ``.npz`` bytes and per-class sums of scaled maps."""
    params = dict(settings.params)
    if "generator" in _parameters(settings.method):
        params["generator"] = torch.Generator().manual_seed(shard_seed(settings.seed, shard.index))
    maps, targets, scores = [], [], []
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    position, result = shard.start, None
    for inputs, labels in _inputs(items, settings):
        count = inputs.shape[0]
        wanted = _batch_target(settings.targets, labels, position, count)
        result = explain(model, inputs, settings.method, target=wanted, layer=settings.layer, **params)
        computed = result.maps.cpu().numpy()
        largest = float(np.abs(computed).max(initial=0.0, where=np.isfinite(computed)))
        if largest > float(np.finfo(_DTYPES[settings.dtype]).max):
            raise ValueError(
                f"maps of items {position}–{position + count - 1} reach {largest:.3g}: they overflow {settings.dtype}, "
                "use float32"
            )
        stored = computed.astype(_DTYPES[settings.dtype])
        explained = _explained(result.target, count)
        maps.append(stored)
        targets.append(explained)
        scores.append(result.scores.cpu().numpy().astype(np.float32))
        scaled = torch.from_numpy(scaled_magnitude(result.spatial().detach().cpu().numpy()))
        for cls in np.unique(explained):
            rows = torch.as_tensor(np.flatnonzero(explained == cls))
            sums[int(cls)] = sums.get(int(cls), 0) + scaled[rows].sum(0).numpy()
            counts[int(cls)] = counts.get(int(cls), 0) + len(rows)
        position += count
    assert result is not None, "a shard holds at least one item"
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, positions=np.arange(shard.start, position, dtype=np.int64), maps=np.concatenate(maps),
        targets=np.concatenate(targets), scores=np.concatenate(scores),
    )  # fmt: skip
    return _Explained(
        buffer.getvalue(), sums, counts, tuple(maps[0].shape[1:]), result.layer, _json_safe(result.params)
    )


def _write_shard(folder: Path, shard: Shard, result: _Explained) -> tuple[ShardFile, _Explained]:
    """Write a shard's file as soon as it arrives; keep only its name and its summary, not its maps."""
    name = shard_file(shard.index)
    (folder / name).write_bytes(result.payload)
    return ShardFile(shard.index, shard.start, shard.stop, name, len(result.payload)), replace(result, payload=b"")


def _inputs(items: Any, settings: _Settings) -> Iterator[tuple[Tensor, Tensor | None]]:
    if isinstance(settings.targets, str):  # "label": the items' own labels
        yield from labelled_batches(items, settings.batch_size)
        return
    for inputs in batches(items, settings.batch_size):
        yield inputs, None


def _batch_target(targets: Any, labels: Tensor | None, position: int, count: int) -> Any:
    if isinstance(targets, str):
        assert labels is not None
        return labels.long().flatten().tolist()
    if isinstance(targets, np.ndarray):
        return targets[position : position + count].tolist()
    return targets


def _targets(target: int | str | Sequence[int] | None, size: int) -> int | str | np.ndarray | None:
    if target is None or target == "label":
        return target
    if isinstance(target, str):
        raise ValueError(f"unknown target {target!r}; valid: None (predicted), 'label', a class, or one per item")
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    per_item = np.asarray(target, np.int64).reshape(-1)
    if len(per_item) != size:
        raise ValueError(f"{len(per_item)} targets for {size} items: give one class, or one per item")
    return per_item


def _target_label(target: Any) -> str:
    if target is None:
        return "predicted"
    if isinstance(target, str):
        return target
    return str(int(target)) if isinstance(target, (int, np.integer)) else "given"


def _explained(target: Any, count: int) -> np.ndarray:
    """The class each map explains, ``(count,)`` (-1 for a custom target function)."""
    if isinstance(target, list):
        return np.asarray(target, np.int64)
    return np.full(count, -1, np.int64)


def _parameters(method: str) -> set[str]:
    import inspect

    return set(inspect.signature(ATTRIBUTIONS.get(method)).parameters)


def _prepare(folder: Path, overwrite: bool) -> Path:
    """``folder``, created; with ``overwrite``, emptied of what explain_dataset wrote there (and of nothing else)."""
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} is not empty: pass overwrite=True to replace it, or another out=")
        foreign = [p.name for p in folder.iterdir() if not (p.is_file() and _ours(p.name))]
        if foreign:
            raise FileExistsError(
                f"{folder} holds files explain_dataset did not write ({', '.join(sorted(foreign)[:5])}): not replacing"
            )
        for path in folder.iterdir():
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _ours(name: str) -> bool:
    return name in (MANIFEST, SUMMARY) or SHARD_FILE.fullmatch(name) is not None


def _write_summary(folder: Path, means: dict[int, np.ndarray], counts: dict[int, int]) -> None:
    classes = np.array(sorted(means), np.int64)
    shape = next(iter(means.values())).shape if means else (0, 0)
    stacked = np.stack([means[c] for c in classes]) if means else np.zeros((0, *shape), np.float32)
    np.savez_compressed(
        folder / SUMMARY, classes=classes, counts=np.array([counts[c] for c in classes], np.int64), means=stacked
    )


def _json_safe(params: dict[str, Any]) -> dict[str, Any]:
    """The method's parameters as JSON: numbers, strings and lists as they are, anything else by its repr."""
    safe = {}
    for key, value in params.items():
        if isinstance(value, torch.Generator):  # each shard's own, drawn from seed=: the manifest's "seed" says it
            continue
        if isinstance(value, (bool, int, float, str, type(None))):
            safe[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            safe[key] = list(value)
        else:
            safe[key] = repr(value)[:200]
    return safe
