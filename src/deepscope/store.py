"""The run store: one SQLite file per run, written asynchronously, read by reports and the dashboard.

A run lives in a folder: ``<run_dir>/run.sqlite`` holds every row (WAL mode while it is written,
``synchronous=NORMAL``; back to a rollback journal when its writer closes, so reading a finished
run adds no files next to it), and ``<run_dir>/blobs/`` holds large arrays (``.npy``) and media
files referenced by relative path. :class:`RunWriter` buffers rows in memory and a background
thread commits them in one transaction every ``flush_seconds`` or ``flush_rows`` rows, so a
training loop pays about a microsecond per scalar; a crash loses at most the unflushed batch and
never corrupts the file. :class:`RunReader` opens the file read-only and works while a writer is
still writing.

The schema, record types and shared encodings live in ``deepscope._store_schema`` and the
writer in ``deepscope._store_writer``; this module reads and re-exports the public names.

This module is layer 1 of the architecture: it needs only the standard library and numpy, never
torch, so a run recorded on a GPU machine can be opened anywhere.

Example:
    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> with RunWriter(run_dir, name="demo") as writer:
    ...     writer.add_scalar("train/loss", 0, 1.5)
    >>> with RunReader(run_dir) as reader:
    ...     reader.scalars("train/loss").values.tolist(), reader.info.status
    ([1.5], 'finished')
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from deepscope._store_lock import LOCK_FILENAME, WriterLock, writer_alive
from deepscope._store_schema import (
    BLOB_DIR,
    FINDING_INSERT,
    SCHEMA_VERSION,
    STORE_FILENAME,
    FindingRecord,
    MediaRecord,
    RunInfo,
    RunLocation,
    Series,
    check_schema,
    decode_inline,
    finding_row,
    store_path,
    to_json,
)
from deepscope._store_writer import RunWriter
from deepscope.errors import RunLockedError, SchemaVersionError, UnknownNameError

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "FindingRecord",
    "MediaRecord",
    "RunInfo",
    "RunReader",
    "RunWriter",
    "Series",
    "delete_run",
    "find_runs",
    "replace_findings",
]


# ------------------------------------------------------------------------------------------ reader


def _downsample_index(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (ascending) of the rows kept: first, last, and each bucket's min and max of the rows between.

    The ``n - 2`` inner rows are split into ``(max_points - 2) // 2`` contiguous buckets, so at most
    ``max_points`` rows are kept and every spike (including the global min and max) survives. NaN
    counts as above +inf, as numpy sorts it, so a NaN is kept as its bucket's maximum. Among equal
    values the first is the minimum and the last the maximum. Linear time: one reduction per bucket
    (``reduceat``), then the first (last) position holding the bucket's minimum (maximum).
    """
    n = len(values)
    inner = values[1:-1]
    n_buckets = (max_points - 2) // 2
    ids = np.arange(n_buckets, dtype=np.int64)
    starts = -(-ids * (n - 2) // n_buckets)  # the first row i with i * n_buckets // (n - 2) == bucket
    bucket = np.repeat(ids, np.diff(np.append(starts, n - 2)))  # (n - 2,) bucket of each inner row
    nan = np.isnan(inner)
    low = np.fmin.reduceat(inner, starts)[bucket]  # NaN only where the whole bucket is NaN
    high = np.maximum.reduceat(inner, starts)[bucket]  # NaN wherever the bucket holds one
    at_low = np.flatnonzero((inner == low) | (nan & np.isnan(low)))
    at_high = np.flatnonzero((inner == high) | (nan & np.isnan(high)))
    firsts = at_low[np.searchsorted(bucket[at_low], ids)]
    lasts = at_high[np.searchsorted(bucket[at_high], ids, side="right") - 1]
    return np.unique(np.concatenate(([0, n - 1], firsts + 1, lasts + 1)))


def _bucket_rows(execute: Any, tag: str, first: int, last: int, buckets: int) -> list[tuple]:
    """``(step, value)`` rows keeping each step bucket's extremes and one NULL (NaN), in step order.

    SQLite's bare-column rule makes ``SELECT MIN(value), step`` return the step of the minimum row.
    """
    edges = np.linspace(first, last + 1, buckets + 1).astype(np.int64).tolist()
    where = "FROM scalars WHERE tag = ? AND step >= ? AND step < ?"
    kept: dict[tuple, None] = {}
    for a, b in itertools.pairwise(edges):
        if a == b:
            continue
        low, low_step, count, finite = execute(
            f"SELECT MIN(value), step, COUNT(*), COUNT(value) {where}", (tag, a, b)
        ).fetchone()
        if count == 0:
            continue
        if finite:
            high, high_step = execute(f"SELECT MAX(value), step {where}", (tag, a, b)).fetchone()
            kept[(low_step, low)] = kept[(high_step, high)] = None
        if finite < count:
            kept[execute(f"SELECT step, value {where} AND value IS NULL LIMIT 1", (tag, a, b)).fetchone()] = None
    ends = execute(
        "SELECT step, value FROM (SELECT step, value FROM scalars WHERE tag = ? AND step = ? ORDER BY rowid LIMIT 1) "
        "UNION ALL SELECT step, value FROM (SELECT step, value FROM scalars WHERE tag = ? AND step = ? "
        "ORDER BY rowid DESC LIMIT 1)",
        (tag, first, tag, last),
    ).fetchall()
    kept.update(dict.fromkeys(ends))
    return sorted(kept, key=lambda row: row[0])


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only; in a read-only folder, open a store with no ``-wal`` file as immutable.

    A read-only connection to a WAL database still needs its ``-shm`` index, which SQLite cannot
    create in a folder it may not write to. A writer that closes leaves the store in rollback mode,
    which needs none; a store still in WAL mode (a reader held it when its writer closed, or an
    older deepscope wrote it) but with no ``-wal`` file has nothing that can change under the
    reader, so ``immutable=1`` (no locks, no index) reads it safely. With a ``-wal`` file present
    the original connection is kept and its error surfaces on first use, as before.
    """
    uri = path.resolve().as_uri()

    def connect(query: str) -> sqlite3.Connection:
        return sqlite3.connect(f"{uri}?{query}", uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)

    conn = connect("mode=ro")
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opening is lazy: this opens the file and its index
    except sqlite3.OperationalError:
        if path.with_name(f"{path.name}-wal").exists():
            return conn
        conn.close()
        return connect("mode=ro&immutable=1")
    except sqlite3.DatabaseError:  # not an SQLite file: check_schema reports it
        pass
    return conn


class RunReader(RunLocation):
    """Read a run store (read-only; safe while a writer is still writing).

    Args:
        run_dir: the run folder (or its ``run.sqlite`` file).

    Raises:
        FileNotFoundError: there is no ``run.sqlite`` in ``run_dir``.
        SchemaVersionError: the store was written with a schema version this deepscope cannot read.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self._run_dir, self._path = store_path(run_dir)
        if not self._path.is_file():
            raise FileNotFoundError(
                f"no deepscope run store at {self._path}; pass a run folder (find_runs() lists the runs below a folder)"
            )
        self._conn = _connect_readonly(self._path)
        self._lock = threading.Lock()  # the dashboard may share one reader between request threads
        try:
            check_schema(self._conn, self._path)
        except BaseException:
            self._conn.close()
            raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @property
    def info(self) -> RunInfo:
        """Run identity, status, config and versions (re-read on each access, so status stays current)."""
        rows = self._query("SELECT run_id, name, created, status, config, versions FROM runs")
        if not rows:
            raise SchemaVersionError(f"{self._path} has no run record; it is not a complete deepscope run store")
        run_id, name, created, status, config, versions = rows[0]
        if status == "running" and not writer_alive(self._run_dir):
            status = "interrupted"
        return RunInfo(run_id, name, created, status, json.loads(config or "{}"), json.loads(versions or "{}"))

    def meta(self) -> dict[str, Any]:
        """Run-level values set with :meth:`RunWriter.set_meta` (``schema_version`` excluded)."""
        rows = self._query("SELECT key, value FROM meta WHERE key != 'schema_version' ORDER BY key")
        return {key: json.loads(value) for key, value in rows}

    def _tags(self, table: str) -> list[str]:
        if table == "media":  # small and unindexed
            return [r[0] for r in self._query("SELECT DISTINCT tag FROM media ORDER BY tag")]
        # skip-scan the (tag, step) index: one seek per distinct tag instead of reading every row's entry
        # (10 tags over 10 M rows: well under 1 ms instead of about a second)
        query = (
            f"WITH RECURSIVE t(tag) AS (SELECT MIN(tag) FROM {table} UNION ALL "
            f"SELECT (SELECT MIN(tag) FROM {table} WHERE tag > t.tag) FROM t WHERE t.tag IS NOT NULL) "
            "SELECT tag FROM t WHERE tag IS NOT NULL"
        )
        return [r[0] for r in self._query(query)]

    def scalar_tags(self) -> list[str]:
        """Sorted scalar tags."""
        return self._tags("scalars")

    def tensor_tags(self) -> list[str]:
        """Sorted tensor tags."""
        return self._tags("tensors")

    def media_tags(self) -> list[str]:
        """Sorted media tags."""
        return self._tags("media")

    def scalars(self, tag: str, max_points: int | None = None) -> Series:
        """All points of a scalar tag in step order, optionally downsampled to at most ``max_points``.

        Downsampling keeps the first and last points and, per contiguous bucket of the points in
        between, the lowest and highest value, so spikes stay visible in a plot.

        Raises:
            UnknownNameError: no scalar has this tag (the message lists close tags).
            ValueError: ``max_points`` is below 4 (first, last, min and max need 4 points).
        """
        if max_points is not None and max_points < 4:
            raise ValueError(f"max_points must be >= 4 (first, last, min and max points), got {max_points}")
        with self._lock:
            cursor = self._conn.execute(
                "SELECT step, wall_time, value FROM scalars WHERE tag = ? ORDER BY step, rowid", (tag,)
            )
            rows = np.fromiter(cursor, dtype=[("step", "i8"), ("wall", "f8"), ("value", "f8")])  # NULL (NaN) -> nan
        if len(rows) == 0:
            raise UnknownNameError("scalar tag", tag, self.scalar_tags())
        if max_points is not None and len(rows) > max_points:
            rows = rows[_downsample_index(rows["value"], max_points)]
        return Series(tag, rows["step"].copy(), rows["wall"].copy(), rows["value"].copy())

    def scalar_window(
        self, tag: str, *, start: int | None = None, end: int | None = None, max_points: int = 2000
    ) -> tuple[Series, int]:
        """The points of ``tag`` with ``start <= step <= end``, bucketed in SQLite, and how many there are.

        A range of at most ``max_points`` points comes whole. A longer one is cut into
        ``(max_points - 2) // 2`` equal step ranges; each keeps the point with its lowest and the
        point with its highest value (inf included), plus one NaN if the bucket holds any (so a
        series with NaNs may return up to half as many points again), and the range's first and
        last points. SQLite does the work over its ``(tag, step)`` index, one
        small indexed query per bucket, so a million-point series is summarised without reading
        it into Python (about 0.3 s here, against 0.5 s to fetch its rows alone).

        Returns:
            ``(series, total)``: the kept points in step order (``wall_times`` are NaN) and the number
            of points in the range.

        Raises:
            UnknownNameError: no scalar has this tag.
            ValueError: ``max_points`` is below 4 or ``start > end``.
        """
        if max_points < 4:
            raise ValueError(f"max_points must be >= 4 (first, last, min and max points), got {max_points}")
        if start is not None and end is not None and start > end:
            raise ValueError(f"start ({start}) is after end ({end})")
        lo_step = -(2**63) if start is None else operator.index(start)
        hi_step = 2**63 - 1 if end is None else operator.index(end)
        where = "FROM scalars WHERE tag = ? AND step >= ? AND step <= ?"
        with self._lock:
            execute = self._conn.execute
            total, first, last = execute(
                f"SELECT COUNT(*), MIN(step), MAX(step) {where}", (tag, lo_step, hi_step)
            ).fetchone()
            known = total > 0 or execute("SELECT 1 FROM scalars WHERE tag = ? LIMIT 1", (tag,)).fetchone() is not None
            if not known:
                rows = []
            elif total <= max_points:
                rows = execute(f"SELECT step, value {where} ORDER BY step, rowid", (tag, lo_step, hi_step)).fetchall()
            else:
                rows = _bucket_rows(execute, tag, first, last, (max_points - 2) // 2)
        if not known:
            raise UnknownNameError("scalar tag", tag, self.scalar_tags())
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        return Series(tag, steps, np.full(len(steps), np.nan), values), int(total)

    def last_step(self) -> int | None:
        """The latest step of any scalar, tensor or media row (None for an empty run)."""
        rows = self._query(
            "SELECT MAX(step) FROM (SELECT MAX(step) AS step FROM scalars UNION ALL SELECT MAX(step) FROM tensors "
            "UNION ALL SELECT MAX(step) FROM media)"
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def tensor_steps(self, tag: str) -> np.ndarray:
        """Steps (int64, ascending) at which ``tag`` was stored."""
        steps = np.array([r[0] for r in self._query("SELECT step FROM tensors WHERE tag = ? ORDER BY step", (tag,))])
        if len(steps) == 0:
            raise UnknownNameError("tensor tag", tag, self.tensor_tags())
        return steps.astype(np.int64)

    def _load(self, dtype: str, shape: str, data: bytes | None, blob: str | None, mmap: bool = False) -> np.ndarray:
        if blob is not None:
            path = self._run_dir / blob
            if not path.is_file():
                raise FileNotFoundError(f"tensor blob {path} referenced by {self._path} is missing")
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        return decode_inline(dtype, shape, data)

    def tensor(self, tag: str, step: int, *, mmap: bool = False) -> np.ndarray:
        """The array stored for ``tag`` at ``step`` (the last one if it was stored twice).

        ``mmap=True``: a large array (stored as a blob) comes back as a read-only memory map, so reading a few
        rows of it does not read the whole file; a small one (stored inline) is read as usual.
        """
        rows = self._query(
            "SELECT dtype, shape, data, blob FROM tensors WHERE tag = ? AND step = ? ORDER BY rowid DESC LIMIT 1",
            (tag, operator.index(step)),
        )
        if not rows:
            steps = self.tensor_steps(tag)  # raises for an unknown tag
            near = steps[np.argsort(np.abs(steps - step), kind="stable")[:3]]
            raise KeyError(
                f"tensor tag {tag!r} has no step {step}; nearest stored steps: {', '.join(map(str, sorted(near)))} "
                f"({len(steps)} steps from {steps[0]} to {steps[-1]})"
            )
        return self._load(*rows[0], mmap=mmap)

    def tensors(self, tag: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every array of ``tag``: ``(steps, arrays)`` in step order."""
        rows = self._query(
            "SELECT step, dtype, shape, data, blob FROM tensors WHERE tag = ? ORDER BY step, rowid", (tag,)
        )
        if not rows:
            raise UnknownNameError("tensor tag", tag, self.tensor_tags())
        return np.array([r[0] for r in rows], dtype=np.int64), [self._load(*r[1:]) for r in rows]

    def media(self, tag: str | None = None) -> list[MediaRecord]:
        """Media records (of one tag, or all) in (tag, step) order, with absolute paths."""
        sql, args = "SELECT tag, step, kind, path FROM media", ()
        if tag is not None:
            sql, args = sql + " WHERE tag = ?", (tag,)
        rows = self._query(sql + " ORDER BY tag, step, rowid", args)
        if tag is not None and not rows:
            raise UnknownNameError("media tag", tag, self.media_tags())
        return [MediaRecord(t, s, k, (self._run_dir / p).resolve()) for t, s, k, p in rows]

    def findings(self) -> list[FindingRecord]:
        """Stored findings in the order they were added."""
        rows = self._query(
            "SELECT check_name, severity, title, evidence, step_start, step_end, actions FROM findings ORDER BY id"
        )
        return [FindingRecord(c, s, t, json.loads(e), a, b, json.loads(x)) for c, s, t, e, a, b, x in rows]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def find_runs(path: str | os.PathLike) -> list[Path]:
    """Run folders at or below ``path``: ``[path]`` if it holds a store, else the sorted runs up to 3 levels down.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no run.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    root, store = store_path(root)
    if store.is_file():
        return [root]
    found: list[Path] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if STORE_FILENAME in filenames and here != root:
            found.append(here)
            dirnames.clear()  # a run's own folders (blobs/) hold no runs
            continue
        if len(here.parts) - base_depth >= 3:
            dirnames.clear()
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    if not found:
        raise FileNotFoundError(f"no deepscope run ({STORE_FILENAME}) in {root} or up to 3 folders below it")
    return sorted(found)


def replace_findings(
    run_dir: str | os.PathLike,
    findings: Iterable[Mapping[str, Any]],
    *,
    check: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Replace the findings stored in a finished run (all of them, or those of one ``check``) in one transaction.

    Each finding is a mapping of :meth:`RunWriter.add_finding`'s arguments; ``meta`` values are set
    in the same transaction (e.g. which checks ran). The run's status and everything else are left
    as they are. Returns how many findings were written.

    Raises:
        FileNotFoundError: ``run_dir`` holds no run.
        RunLockedError: a live writer is recording the run (write findings from it with ``add_finding``).
    """
    root, store = store_path(run_dir)
    if not store.is_file():
        raise FileNotFoundError(f"no deepscope run ({STORE_FILENAME}) in {root}")
    rows = [
        finding_row(
            f["check"],
            f["severity"],
            f["title"],
            f["evidence"],
            f.get("step_start"),
            f.get("step_end"),
            f.get("actions", ()),
        )
        for f in findings
    ]
    lock = WriterLock(root)
    try:
        conn = sqlite3.connect(store, isolation_level=None, timeout=30.0)
        try:
            check_schema(conn, store)
            conn.execute("BEGIN IMMEDIATE")
            if check is None:
                conn.execute("DELETE FROM findings")
            else:
                conn.execute("DELETE FROM findings WHERE check_name = ?", (check,))
            conn.executemany(FINDING_INSERT, rows)
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(key, to_json(value, f"meta value {key!r}")) for key, value in (meta or {}).items()],
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
    finally:
        lock.release()
    return len(rows)


def delete_run(run_dir: str | os.PathLike) -> bool:
    """Delete the store of the run in ``run_dir`` (the SQLite files, its lock and ``blobs/``); other files are kept.

    Returns:
        Whether there was a store to delete.

    Raises:
        RunLockedError: a live writer is still recording this run.
    """
    root, store = store_path(run_dir)
    if not store.is_file():
        return False
    if writer_alive(root) and (root / LOCK_FILENAME).is_file():
        raise RunLockedError(f"{root} is being recorded by a live writer; stop it before deleting the run")
    for suffix in ("", "-wal", "-shm", "-journal"):
        store.with_name(store.name + suffix).unlink(missing_ok=True)
    (root / LOCK_FILENAME).unlink(missing_ok=True)
    shutil.rmtree(root / BLOB_DIR, ignore_errors=True)
    return True
