"""The run store's schema: DDL, version check, record types and the encodings writer and reader share.

:mod:`deepscope._store_writer` writes what this module describes and :mod:`deepscope.store` reads
it back (STYLE principle 13), so a change to a table or an encoding is made here, once. Standard
library and numpy only; never torch.
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.errors import SchemaVersionError

__all__ = [
    "BLOB_DIR",
    "FINDING_INSERT",
    "SCHEMA_DDL",
    "SCHEMA_VERSION",
    "STATUSES",
    "STORE_FILENAME",
    "FindingRecord",
    "MediaRecord",
    "RunInfo",
    "RunLocation",
    "Series",
    "check_schema",
    "decode_inline",
    "finding_row",
    "store_path",
    "tensor_header",
    "to_json",
]

SCHEMA_VERSION = 1
STORE_FILENAME = "run.sqlite"
BLOB_DIR = "blobs"  # large arrays and media, beside the SQLite file

STATUSES = ("running", "finished", "failed")
SCHEMA_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, name TEXT, created REAL, status TEXT,
                                 config TEXT, versions TEXT);
CREATE TABLE IF NOT EXISTS scalars (tag TEXT, step INTEGER, wall_time REAL, value REAL);
CREATE INDEX IF NOT EXISTS scalars_tag_step ON scalars (tag, step);
CREATE TABLE IF NOT EXISTS tensors (tag TEXT, step INTEGER, wall_time REAL, dtype TEXT, shape TEXT,
                                    data BLOB, blob TEXT);
CREATE INDEX IF NOT EXISTS tensors_tag_step ON tensors (tag, step);
CREATE TABLE IF NOT EXISTS media (tag TEXT, step INTEGER, wall_time REAL, kind TEXT, path TEXT);
CREATE TABLE IF NOT EXISTS findings (id INTEGER PRIMARY KEY, check_name TEXT, severity TEXT, title TEXT,
                                     evidence TEXT, step_start INTEGER, step_end INTEGER, actions TEXT);
"""


# ----------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Run-level facts: identity, lifecycle status, hyper-parameters and library versions.

    ``status`` is ``"running"`` while a writer is live, ``"finished"`` or ``"failed"`` once it closed,
    and ``"interrupted"`` when the writing process died without closing (killed, out of memory):
    everything it committed is readable, and ``Recorder(..., resume=True)`` continues it.
    """

    run_id: str
    name: str
    created: float
    status: str
    config: dict
    versions: dict


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: element-wise array equality has no truth value
class Series:
    """One scalar tag as parallel arrays in step order: ``steps`` int64, ``wall_times`` and ``values`` float64."""

    tag: str
    steps: np.ndarray
    wall_times: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """A media file (image, animation, HTML…) stored in the run; ``path`` is absolute."""

    tag: str
    step: int
    kind: str
    path: Path


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """A stored diagnostic finding, as written by :meth:`RunWriter.add_finding`."""

    check: str
    severity: str
    title: str
    evidence: dict
    step_start: int | None
    step_end: int | None
    actions: list[str]


# ---------------------------------------------------------------------------------------- encoding


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def to_json(value: Any, what: str) -> str:
    """Serialise ``value`` (numpy scalars/arrays and paths allowed) or raise a TypeError naming ``what``."""
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers, numpy values): {err}") from None


def finding_row(
    check: str,
    severity: str,
    title: str,
    evidence: dict,
    step_start: int | None,
    step_end: int | None,
    actions: Iterable[str],
) -> tuple:
    """One ``findings`` row (without its id): text columns, JSON evidence and actions, integer steps."""
    return (
        str(check),
        str(severity),
        str(title),
        to_json(dict(evidence), "finding evidence"),
        None if step_start is None else operator.index(step_start),
        None if step_end is None else operator.index(step_end),
        to_json([str(a) for a in actions], "finding actions"),
    )


FINDING_INSERT = (
    "INSERT INTO findings (check_name, severity, title, evidence, step_start, step_end, actions) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def tensor_header(arr: np.ndarray) -> tuple[str, str]:
    """The ``(dtype, shape)`` columns of a ``tensors`` row, as :func:`decode_inline` reads them back."""
    return arr.dtype.str, json.dumps(list(arr.shape))


def decode_inline(dtype: str, shape: str, data: bytes | None) -> np.ndarray:
    """A writable array from the ``dtype``, ``shape`` and ``data`` columns of an inline ``tensors`` row."""
    return np.frombuffer(data or b"", dtype=np.dtype(dtype)).reshape(json.loads(shape)).copy()


# ------------------------------------------------------------------------------- location, version


def store_path(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(run_dir, run_dir/run.sqlite)``; a path to the sqlite file itself is accepted too."""
    path = Path(run_dir).expanduser()
    if path.name == STORE_FILENAME and path.is_file():
        path = path.parent
    return path, path / STORE_FILENAME


class RunLocation:
    """Where a run lives: the ``run_dir`` and ``path`` properties shared by the writer and the reader."""

    _run_dir: Path
    _path: Path

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return self._run_dir

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Raise SchemaVersionError unless the store at ``path`` has this module's schema version."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as err:  # no meta table, or not an SQLite file at all
        raise SchemaVersionError(f"{path} is not a deepscope run store ({err})") from None
    if row is None:
        raise SchemaVersionError(f"{path} is not a deepscope run store (its meta table has no schema_version)")
    version = json.loads(row[0])
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"run store {path} was written by schema version {version}; this deepscope reads version "
            f"{SCHEMA_VERSION}; upgrade deepscope (or open the run with the deepscope version that wrote it)"
        )
