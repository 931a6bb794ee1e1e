"""Store a :class:`~deepscope.scale.DatasetExplanation`'s summary in a run, under ``explain_dataset/<name>``.

The shards stay in their folder (the meta entry points at it); the run gets what the report and the
dashboard draw: the numbers as one meta entry, the per-class mean maps and, when the data is given,
a few examples per explained class (input and spatial map, ``|m|`` min–max scaled to [0, 1]). The
report's *Dataset explanations* section (:mod:`deepscope._report_scale`) reads exactly these keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepscope._data import fetch
from deepscope._explanation_files import scaled_magnitude
from deepscope._store_writer import json_safe
from deepscope._tags import TAGS
from deepscope.scale._shards import sized
from deepscope.scale.explain import _fields
from deepscope.store import STORE_FILENAME, RunReader, RunWriter

__all__ = ["PREFIX", "record_explanations"]

PREFIX = TAGS.EXPLAIN_DATASET  # the meta key of a record is f"{PREFIX}/<name>", its tensors' tags start with it


def record_explanations(
    result: Any,
    run_dir: Path,
    *,
    data: Any = None,
    class_names: Sequence[str] | None = None,
    examples: int = 4,
    name: str = "explanations",
    overwrite: bool = False,
) -> Path:
    """Store ``result`` (a ``DatasetExplanation``) in the run at ``run_dir`` (created if missing); return the folder.

    Raises:
        FileExistsError: the run already holds a record called ``name`` and ``overwrite`` is False.
        ValueError: a ``name`` with ``/``, too few ``class_names``, or ``data`` of another size than the result's.
    """
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if examples < 0:
        raise ValueError(f"examples must be >= 0, got {examples}")
    classes = np.array(sorted(result.class_means), np.int64)
    if class_names is not None and len(class_names) <= classes.max(initial=-1):
        raise ValueError(f"{len(class_names)} class_names, but the maps explain class {int(classes.max())}")
    if data is not None and sized(data) != result.items:
        raise ValueError(f"data holds {sized(data)} items, but the explanation is of {result.items}")
    key = f"{PREFIX}/{name}"
    stale = _existing(Path(run_dir), key, overwrite)
    shown = _examples(result, data, classes, examples) if data is not None and examples else None
    new = not (Path(run_dir) / STORE_FILENAME).is_file()
    with RunWriter(
        run_dir,
        name=None,  # a new run is named after its folder
        config={"task": "explain_dataset"} if new else None,
        versions=result.versions if new else None,
    ) as w:
        w.set_meta(key, _summary(result, class_names))
        w.add_tensor(f"{key}/classes", 0, classes)
        w.add_tensor(f"{key}/class_counts", 0, np.array([result.class_counts[c] for c in classes], np.int64))
        means = [result.class_means[c] for c in classes]
        shape = result.map_shape[-2:]  # (H, W): the means are of spatial maps
        w.add_tensor(f"{key}/class_means", 0, np.stack(means).astype(np.float32) if means else np.zeros((0, *shape)))
        if shown is None:
            shown = {tag: np.zeros((0, *shape), dtype) for tag, (shape, dtype) in stale.items()}  # hide the old ones
        for part, array in shown.items():
            w.add_tensor(f"{key}/examples/{part}", 0, array)
    return Path(run_dir)


def _existing(run_dir: Path, key: str, overwrite: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Trailing shape and dtype of each example tensor an earlier record of ``key`` left (raises unless replaced)."""
    if not (run_dir / STORE_FILENAME).is_file():
        return {}
    with RunReader(run_dir) as reader:
        if key not in reader.meta():
            return {}
        if not overwrite:
            raise FileExistsError(
                f"{run_dir} already holds the dataset explanation {key.removeprefix(PREFIX + '/')!r}: pass "
                "overwrite=True to replace it, or another name="
            )
        arrays = {t: reader.tensor(t, 0) for t in reader.tensor_tags() if t.startswith(f"{key}/examples/")}
        return {t.rsplit("/", 1)[1]: (a.shape[1:], a.dtype) for t, a in arrays.items()}


def _summary(result: Any, class_names: Sequence[str] | None) -> dict[str, Any]:
    """The record's meta entry: how the maps were made, what they cover and what they cost."""
    seconds = result.seconds
    covered = int(result.coverage.covered().sum())
    return json_safe(
        {
            "path": str(result.path.resolve()), "method": result.method, "layer": result.layer,
            "target": result.target, "items": result.items, "covered": covered, "shards": result.coverage.shards,
            "failed": [_fields(f) for f in result.coverage.failed],
            "backend": result.coverage.backend, "seconds": seconds,
            "items_per_second": covered / seconds if seconds > 0 else None, "dtype": result.dtype,
            "bytes": sum(s.bytes for s in result.shards), "params": result.params,
            "class_names": list(map(str, class_names)) if class_names is not None else None,
            "map_shape": list(result.map_shape),
        }
    )  # fmt: skip


def _examples(result: Any, data: Any, classes: np.ndarray, per_class: int) -> dict[str, np.ndarray] | None:
    """The first ``per_class`` covered items of each explained class: inputs, scaled maps, positions, classes.

    None when the inputs are not images ``(M, C, H, W)``.
    """
    positions, targets = result.column("positions").astype(np.int64), result.column("targets").astype(np.int64)
    chosen = np.concatenate([positions[targets == c][:per_class] for c in classes]) if len(classes) else positions[:0]
    if not len(chosen):
        return None
    inputs = fetch(data, chosen.tolist()).detach().cpu().float().numpy()
    if inputs.ndim != 4:
        return None
    maps = torch.as_tensor(result.maps(chosen), dtype=torch.float64)
    spatial = maps.sum(1) if maps.ndim == 4 else maps  # (M, H, W): per-channel maps summed, as the class means
    return {
        "inputs": inputs.astype(np.float32),
        "maps": scaled_magnitude(spatial.numpy()).astype(np.float32),
        "positions": chosen,
        "targets": targets[np.searchsorted(positions, chosen)],
    }
