"""The dashboard's data functions: plain ``*_impl(root, ...)`` functions returning JSON-ready dicts.

Routes in ``deepscope.server.app`` only call these, so they are tested without HTTP. A run id is a
run folder's path relative to the dashboard root with ``/`` separators; it is looked up among the
runs actually found under the root (never joined onto a path as given), then its resolved folder
and store file are checked to lie inside the root, so ``..``, absolute paths, NUL bytes, encoded
separators and symlinks pointing outside the root all resolve to "no such run".
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.errors import DeepscopeError, UnknownNameError
from deepscope.server._downsample import minmax_indices
from deepscope.store import STORE_FILENAME, RunReader, find_runs

__all__ = [
    "DEFAULT_POINTS",
    "MAX_POINTS",
    "NotFound",
    "SeriesCache",
    "resolve_run",
    "run_ids",
    "runs_impl",
    "scalar_series_impl",
    "scalar_tags_impl",
]

DEFAULT_POINTS = 2000
MAX_POINTS = 20_000


class NotFound(LookupError):
    """No run or tag of that name under the dashboard root (the HTTP layer answers 404)."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def run_ids(root: str | os.PathLike) -> dict[str, Path]:
    """Every run under ``root``: its id (relative path with ``/``; the folder name if ``root`` is a run) -> folder.

    Runs whose resolved folder or store file lies outside the resolved root (a symlink) are left out.
    """
    base = Path(root).resolve()
    try:
        found = find_runs(base)
    except FileNotFoundError:
        return {}
    ids: dict[str, Path] = {}
    for folder in found:
        real = folder.resolve()
        if not (_inside(real, base) and _inside((folder / STORE_FILENAME).resolve(), base)):
            continue
        rel = folder.relative_to(base).as_posix()
        ids[base.name if rel == "." else rel] = real
    return ids


def resolve_run(root: str | os.PathLike, run_id: str) -> Path:
    """The folder of the run ``run_id`` under ``root``.

    Raises:
        NotFound: no run under ``root`` has this id (including every traversal attempt).
    """
    if not run_id or "\x00" in run_id or "\\" in run_id or run_id.startswith("/"):
        raise NotFound(f"no run {run_id!r}")
    folder = run_ids(root).get(run_id)
    if folder is None:
        raise NotFound(f"no run {run_id!r}")
    return folder


def runs_impl(root: str | os.PathLike) -> dict[str, Any]:
    """``{"runs": [{id, name, status, created, scalar_tags}, ...]}`` sorted by id; unreadable stores say so."""
    runs = []
    for run_id, folder in sorted(run_ids(root).items()):
        try:
            with RunReader(folder) as reader:
                info = reader.info
                runs.append(
                    {
                        "id": run_id,
                        "name": info.name,
                        "status": info.status,
                        "created": info.created,
                        "scalar_tags": len(reader.scalar_tags()),
                    }
                )
        except (DeepscopeError, sqlite3.DatabaseError, OSError) as error:
            runs.append(
                {
                    "id": run_id,
                    "name": run_id,
                    "status": "unreadable",
                    "created": None,
                    "scalar_tags": 0,
                    "error": str(error),
                }
            )
    return {"runs": runs}


def scalar_tags_impl(root: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """``{"run": id, "tags": [...]}``: the run's sorted scalar tags.

    Raises:
        NotFound: no such run.
    """
    with RunReader(resolve_run(root, run_id)) as reader:
        return {"run": run_id, "tags": reader.scalar_tags()}


def _signature(folder: Path) -> tuple:
    """Changes whenever a writer commits (the WAL file grows or is checkpointed into the store)."""
    sig = []
    for suffix in ("", "-wal"):
        try:
            stat = (folder / (STORE_FILENAME + suffix)).stat()
            sig.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            sig.append(None)
    return tuple(sig)


class SeriesCache:
    """Whole scalar series kept in memory (LRU, bounded by total points), so zooming never re-reads the store.

    A series is re-read when its run's store changes (a live writer committed). Thread-safe.

    Args:
        max_points: the most points held over all cached series (16 bytes each).
    """

    def __init__(self, max_points: int = 20_000_000) -> None:
        self.max_points = max_points
        self._entries: OrderedDict[tuple[Path, str], tuple[tuple, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folder: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of ``tag`` in the run at ``folder``, from memory when the store is unchanged.

        Raises:
            UnknownNameError: the run has no scalar ``tag``.
        """
        key, sig = (folder, tag), _signature(folder)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == sig:
                self._entries.move_to_end(key)
                return hit[1], hit[2]
        steps, values = _read(folder, tag)
        with self._lock:
            self._entries[key] = (sig, steps, values)
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and sum(len(e[1]) for e in self._entries.values()) > self.max_points:
                self._entries.popitem(last=False)
        return steps, values


def _read(folder: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    with RunReader(folder) as reader:
        series = reader.scalars(tag)
    return series.steps, series.values


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values.tolist()]  # JSON has no NaN or inf


def scalar_series_impl(
    root: str | os.PathLike,
    run_id: str,
    tag: str,
    *,
    points: int = DEFAULT_POINTS,
    start: int | None = None,
    end: int | None = None,
    cache: SeriesCache | None = None,
) -> dict[str, Any]:
    """One scalar series, min/max-downsampled to at most ``points`` points within the step range.

    Args:
        root: the dashboard root.
        run_id: the run's id (see :func:`run_ids`).
        tag: the scalar tag.
        points: the most points returned (4 to ``MAX_POINTS``); a range with fewer points comes whole.
        start: first step of the range (inclusive), or None for the first step.
        end: last step of the range (inclusive), or None for the last step.
        cache: where whole series are kept between calls (None reads the store each time).

    Returns:
        ``{"run", "tag", "steps", "values", "total", "downsampled"}``: ``total`` counts the points in
        the range; non-finite values are ``None``.

    Raises:
        NotFound: no such run or tag.
        ValueError: ``points`` is out of range or ``start > end``.
    """
    if not 4 <= points <= MAX_POINTS:
        raise ValueError(f"points must be between 4 and {MAX_POINTS}, got {points}")
    if start is not None and end is not None and start > end:
        raise ValueError(f"start ({start}) is after end ({end})")
    folder = resolve_run(root, run_id)
    try:
        steps, values = cache.get(folder, tag) if cache is not None else _read(folder, tag)
    except UnknownNameError as error:
        raise NotFound(str(error)) from None
    lo = 0 if start is None else int(np.searchsorted(steps, start, side="left"))
    hi = len(steps) if end is None else int(np.searchsorted(steps, end, side="right"))
    steps, values = steps[lo:hi], values[lo:hi]
    keep = minmax_indices(values, points)
    return {
        "run": run_id,
        "tag": tag,
        "steps": steps[keep].tolist(),
        "values": _json_floats(values[keep]),
        "total": len(steps),
        "downsampled": len(keep) < len(steps),
    }
