"""The dashboard's run index: which runs lie under the root, their ids, summaries and change signatures.

Panels' data functions live in ``deepscope.server.panels``; routes only call them. A run id is a
run folder's path relative to the dashboard root with ``/`` separators; it is looked up among the
runs actually found under the root (never joined onto a path as given), then its resolved folder
and store file are checked to lie inside the root, so ``..``, absolute paths, NUL bytes, encoded
separators and symlinks pointing outside the root all resolve to "no such run".
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from deepscope.errors import DeepscopeError
from deepscope.server.panels import panels
from deepscope.store import STORE_FILENAME, RunReader, find_runs

__all__ = ["NotFound", "panels_impl", "resolve_run", "run_ids", "runs_impl", "signature", "version_impl"]


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


def signature(folder: Path) -> tuple:
    """Changes whenever a writer commits (the WAL file grows or is checkpointed into the store)."""
    sig = []
    for suffix in ("", "-wal"):
        try:
            stat = (folder / (STORE_FILENAME + suffix)).stat()
            sig.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            sig.append(None)
    return tuple(sig)


def version_impl(root: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """``{"run", "version", "status"}``: ``version`` changes whenever the run's writer commits (live updates poll it).

    Raises:
        NotFound: no such run.
    """
    folder = resolve_run(root, run_id)
    with RunReader(folder) as reader:
        status = reader.info.status
    version = "-".join("0.0" if part is None else f"{part[0]}.{part[1]}" for part in signature(folder))
    return {"run": run_id, "version": version, "status": status}


def panels_impl(root: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """``{"run", "panels": [{name, title, compare}, ...]}``: the panels that have something to show for the run.

    Raises:
        NotFound: no such run.
    """
    with RunReader(resolve_run(root, run_id)) as reader:
        shown = [p for p in panels() if p.available(reader)]
    return {"run": run_id, "panels": [{"name": p.name, "title": p.title, "compare": p.compare} for p in shown]}
