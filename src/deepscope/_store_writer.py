"""The run store's writer: :class:`RunWriter` buffers rows and a background thread commits them.

``add_*`` calls only append to an in-memory batch (about a microsecond per scalar); the thread
commits the batch in one transaction every ``flush_seconds``, ``flush_rows`` rows or
``_FLUSH_BYTES`` pending bytes, writing large arrays and media to ``blobs/`` first (atomically),
so a crash loses at most the unflushed batch and never corrupts the file. Import it from
:mod:`deepscope.store`. Standard library and numpy only; never torch.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import operator
import os
import platform
import re
import shutil
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from deepscope._environment import environment as environment_now
from deepscope._store_lock import WriterLock
from deepscope._store_schema import (
    BLOB_DIR,
    FINDING_INSERT,
    SCHEMA_DDL,
    SCHEMA_VERSION,
    STATUSES,
    RunLocation,
    check_schema,
    finding_row,
    store_path,
    tensor_header,
    to_json,
)
from deepscope._tags import TAGS
from deepscope.errors import SchemaVersionError

__all__ = ["RunWriter", "json_safe"]

_FLUSH_BYTES = 64 * 2**20  # also commit once this many tensor/media bytes are pending (bounds memory)
_MEDIA_EXT = {"image": ".png", "gif": ".gif", "video": ".mp4", "audio": ".wav", "html": ".html", "text": ".txt"}
_MAGIC_EXT = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"RIFF", ".wav"))


# ----------------------------------------------------------------------------------------- helpers


def _safe_name(tag: str) -> str:
    """A file-system-safe, collision-free folder name for a tag (sanitised prefix + short hash)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", tag).strip("_")[:48] or "tag"
    return f"{stem}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"


def _check_tag(tag: object) -> None:
    if type(tag) is not str or not tag:
        raise TypeError(f"tag must be a non-empty str, got {tag!r}")


def _default_versions() -> dict[str, str]:
    from importlib import metadata

    try:
        deepscope_version = metadata.version("deepscope")
    except metadata.PackageNotFoundError:
        deepscope_version = "0.0.0+unknown"
    return {
        "deepscope": deepscope_version,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def _atomic_write(target: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary sibling of ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ writer

_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    """Commit what a script left open when the interpreter exits; ``failed`` if it exits on an uncaught exception."""
    crashed = getattr(sys, "last_type", None) is not None  # set by the interpreter for an uncaught exception
    for writer in list(_OPEN_WRITERS):
        with contextlib.suppress(Exception):  # nothing useful can be raised at interpreter exit
            if crashed and not writer._status_set:
                writer.set_status("failed")
            writer.close()


def _leave_wal(conn: sqlite3.Connection) -> None:
    """Switch a store whose writer is closing back to a rollback journal, when no reader holds it open.

    WAL mode lets readers follow a live run, but it is a property of the file: every later read-only
    connection would create ``-wal`` and ``-shm`` files next to a finished run, and could not open it
    at all in a folder it may not write to. A reader still connected keeps the store in WAL mode
    (the switch needs the file to itself; the writer does not wait for it), as safe, just untidier.
    The next writer switches it back to WAL.
    """
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA journal_mode=DELETE")


@dataclass
class _Batch:
    scalars: list[tuple] = field(default_factory=list)
    tensors: list[tuple] = field(default_factory=list)  # (tag, step, wall_time, array)
    media: list[tuple] = field(default_factory=list)  # (tag, step, wall_time, kind, rel_path, bytes | None)
    findings: list[tuple] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    discard_after: int | None = None  # delete the rows of later steps before inserting this batch


class RunWriter(RunLocation):
    """Append rows to a run store; ``add_*`` calls only buffer, a background thread commits.

    Opening an existing store of the same schema appends to it (resume). Use it as a context
    manager: leaving the ``with`` block flushes, sets the status to ``"finished"`` (``"failed"``
    when an exception propagates) and closes. One writer at a time per store: a second one (in
    any process) raises :class:`~deepscope.errors.RunLockedError` until the first is closed or its
    process has died.

    Args:
        run_dir: folder of the run (created if missing).
        name: display name of the run; defaults to the folder name.
        config: hyper-parameters stored with the run (JSON-serialisable).
        versions: library versions for provenance, merged over python/numpy/sqlite defaults.
        flush_seconds: commit pending rows at least this often.
        flush_rows: commit as soon as this many rows are pending.
        inline_bytes: tensors up to this size are stored inside SQLite, larger ones as ``.npy`` blobs.

    Raises:
        SchemaVersionError: the store exists but was written with another schema version.
        RunLockedError: another writer is writing this run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        name: str | None = None,
        config: dict | None = None,
        versions: dict | None = None,
        flush_seconds: float = 2.0,
        flush_rows: int = 1000,
        inline_bytes: int = 65536,
    ) -> None:
        if not flush_seconds > 0:
            raise ValueError(f"flush_seconds must be > 0, got {flush_seconds}")
        if flush_rows < 1 or inline_bytes < 0:
            raise ValueError(f"need flush_rows >= 1 and inline_bytes >= 0, got {flush_rows} and {inline_bytes}")
        self._run_dir, self._path = store_path(run_dir)
        self._flush_seconds = float(flush_seconds)
        self._flush_rows = int(flush_rows)
        self._inline_bytes = int(inline_bytes)
        config_json = to_json(config, "config") if config is not None else None
        versions_json = to_json({**_default_versions(), **(versions or {})}, "versions")
        refreshed = versions_json if versions is not None else None  # reopened without versions: keep the stored
        (self._run_dir / BLOB_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self._run_dir)
        try:
            self._conn = self._open(name, config_json, versions_json, refreshed)
        except BaseException:
            self._lock.release()
            raise

        self._cond = threading.Condition()
        self._batch = _Batch()
        self._seq = 0  # rows added so far
        self._taken = 0  # rows handed to the writer thread
        self._done = 0  # rows whose commit has finished (successfully or not)
        self._flush_target = 0
        self._pending_bytes = 0
        self._status_set = False
        self._stopping = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="deepscope-store-writer", daemon=True)
        self._thread.start()
        _OPEN_WRITERS.add(self)

    def _open(
        self, name: str | None, config_json: str | None, versions_json: str, refreshed: str | None
    ) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as err:  # e.g. "file is not a database"
                raise SchemaVersionError(f"{self._path} is not a deepscope run store ({err})") from None
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables:
                check_schema(conn, self._path)
            else:
                for statement in filter(str.strip, SCHEMA_DDL.split(";")):  # DDL is transactional in SQLite
                    conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
            row = conn.execute("SELECT run_id FROM runs").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, 'running', ?, ?)",
                    (uuid.uuid4().hex, name or self._run_dir.name, time.time(), config_json or "{}", versions_json),
                )
                environment = to_json(json_safe(environment_now()), "environment")
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (TAGS.ENVIRONMENT, environment))
            else:  # resume: keep identity and creation time, refresh what the caller passed
                conn.execute(
                    "UPDATE runs SET name = COALESCE(?, name), status = 'running', config = COALESCE(?, config), "
                    "versions = COALESCE(?, versions)",
                    (name, config_json, refreshed),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- buffering (caller's thread; no I/O) ------------------------------------------------------

    def _check_open(self) -> None:
        """Raise a pending writer-thread error, or ValueError once closed (call with the lock held)."""
        if self._error is not None:
            self._raise_error()
        if self._closed:
            raise ValueError(f"the run writer for {self._run_dir} is closed")

    def _raise_error(self) -> None:
        with self._cond:
            err, self._error = self._error, None
        if err is not None:
            note = f"raised by the deepscope run-store writer thread of {self._path}; that batch was lost"
            # what BaseException.add_note (Python >= 3.11) does, and on 3.10 the attribute pytest reads
            err.__notes__ = [*getattr(err, "__notes__", []), note]
            raise err

    def _added(self, rows: int, nbytes: int = 0) -> None:
        """Account for rows just appended (caller holds the lock) and wake the thread when a batch is due."""
        self._seq += rows
        self._pending_bytes += nbytes
        if self._seq - self._taken >= self._flush_rows or self._pending_bytes >= _FLUSH_BYTES:
            self._cond.notify()

    def add_scalar(self, tag: str, step: int, value: float, wall_time: float | None = None) -> None:
        """Buffer one scalar (about a microsecond); NaN and ±inf are stored as such."""
        row = (tag, operator.index(step), time.time() if wall_time is None else float(wall_time), float(value))
        if type(tag) is not str or not tag:
            _check_tag(tag)
        with self._cond:
            self._check_open()
            self._batch.scalars.append(row)
            self._added(1)

    def add_scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        """Buffer several scalars of the same step (``{tag: value}``) under one lock acquisition."""
        step = operator.index(step)
        wall = time.time() if wall_time is None else float(wall_time)
        rows = [(tag, step, wall, float(value)) for tag, value in values.items()]
        for row in rows:
            _check_tag(row[0])
        with self._cond:
            self._check_open()
            self._batch.scalars.extend(rows)
            self._added(len(rows))

    def add_tensor(self, tag: str, step: int, array: np.ndarray | ArrayLike, wall_time: float | None = None) -> None:
        """Buffer a copy of an array; its dtype and shape round-trip exactly (CPU tensors are accepted)."""
        _check_tag(tag)
        step = operator.index(step)
        arr = np.asarray(array).copy(order="C")  # copy: later mutation by the caller must not leak in
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"add_tensor stores bool, integer, float and complex arrays; {tag!r} has dtype {arr.dtype}")
        wall = time.time() if wall_time is None else float(wall_time)
        with self._cond:
            self._check_open()
            self._batch.tensors.append((tag, step, wall, arr))
            self._added(1, arr.nbytes)

    def add_media(
        self, tag: str, step: int, kind: str, data: bytes | str | os.PathLike, wall_time: float | None = None
    ) -> Path:
        """Store a media file under ``blobs/media/`` and return its path relative to the run folder.

        Args:
            tag: media tag, e.g. ``"dynamics/animation"``.
            step: training step it belongs to.
            kind: what it is (``"image"``, ``"gif"``, ``"video"``, ``"html"``…); also picks the file extension
                for raw bytes whose format is not recognised.
            data: the file's bytes (written by the background thread) or a path to an existing file (copied
                now, so a temporary source file may be deleted as soon as this returns).
            wall_time: time stamp; defaults to now.
        """
        _check_tag(tag)
        step = operator.index(step)
        if isinstance(data, (bytes, bytearray, memoryview)):
            payload: bytes | None = bytes(data)
            ext = next((e for magic, e in _MAGIC_EXT if payload.startswith(magic)), _MEDIA_EXT.get(kind, ".bin"))
        elif isinstance(data, (str, os.PathLike)):
            payload, source = None, Path(data)
            if not source.is_file():
                raise FileNotFoundError(f"add_media: no file at {source} (pass bytes for in-memory content)")
            ext = source.suffix or _MEDIA_EXT.get(kind, ".bin")
        else:
            raise TypeError(f"add_media data must be bytes or a file path, got {type(data).__name__}")
        self._check_open()
        rel = Path(BLOB_DIR, "media", _safe_name(tag), f"{step}-{uuid.uuid4().hex[:8]}{ext}")
        if payload is None:

            def copy(fh: Any) -> None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, fh)

            _atomic_write(self._run_dir / rel, copy)
        wall = time.time() if wall_time is None else float(wall_time)
        with self._cond:
            self._check_open()
            self._batch.media.append((tag, step, wall, str(kind), rel.as_posix(), payload))
            self._added(1, len(payload or b""))
        return rel

    def add_finding(
        self,
        check: str,
        severity: str,
        title: str,
        evidence: dict,
        *,
        step_start: int | None = None,
        step_end: int | None = None,
        actions: Iterable[str] = (),
    ) -> None:
        """Buffer a diagnostic finding; ``evidence`` must be JSON-serialisable (numpy values are converted)."""
        row = finding_row(check, severity, title, evidence, step_start, step_end, actions)
        with self._cond:
            self._check_open()
            self._batch.findings.append(row)
            self._added(1)

    def set_meta(self, key: str, value: Any) -> None:
        """Set a run-level JSON value (the last value set for a key wins)."""
        _check_tag(key)
        if key == "schema_version":
            raise ValueError("'schema_version' is managed by the store and cannot be set")
        encoded = to_json(value, f"meta value {key!r}")
        with self._cond:
            self._check_open()
            self._batch.meta[key] = encoded
            self._added(1)

    def set_status(self, status: str) -> None:
        """Set the run status: ``"running"`` (set on open), ``"finished"`` or ``"failed"``."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        with self._cond:
            self._check_open()
            self._batch.status = status
            self._status_set = True
            self._added(1)

    def discard_after(self, step: int) -> None:
        """Delete every scalar, tensor and media row recorded after ``step`` (and their files); blocks until done.

        Used when a run resumes from a checkpoint older than its last recorded step: the rows of the
        lost steps would otherwise be recorded twice. Meta values and findings are kept.
        """
        step = operator.index(step)
        self.flush()  # rows added before the call are deleted too when they are later than ``step``
        with self._cond:
            self._check_open()
            self._batch.discard_after = step
            self._added(1)
        self.flush()

    def flush(self) -> None:
        """Block until every row added so far is committed; re-raise a failure of the writer thread."""
        self._check_open()
        self._wait_committed()
        self._raise_error()

    def _wait_committed(self) -> None:
        with self._cond:
            target = self._seq
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            while self._done < target and self._thread.is_alive():
                self._cond.wait(0.5)

    def close(self) -> None:
        """Commit everything, mark the run ``"finished"`` unless a status was set, and stop the thread (idempotent)."""
        if self._closed:
            return
        with self._cond:
            if not self._status_set:
                self._batch.status = "finished"
                self._seq += 1
            self._stopping = True
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        _OPEN_WRITERS.discard(self)
        self._raise_error()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed and (exc_type is not None or not self._status_set):  # a status set in the block stays
            with self._cond:
                self._batch.status = "failed" if exc_type is not None else "finished"
                self._status_set = True
                self._seq += 1
        self.close()

    # -- writer thread -------------------------------------------------------------------------------

    def _loop(self) -> None:
        deadline = time.monotonic() + self._flush_seconds
        try:
            while True:
                with self._cond:
                    while not self._batch_due():
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    batch, self._batch = self._batch, _Batch()
                    seq, stopping, empty = self._seq, self._stopping, self._seq == self._taken
                    self._taken, self._pending_bytes = seq, 0
                try:
                    if not empty:
                        self._commit(batch)
                except BaseException as err:  # surfaced on the caller's next add_*/flush/close
                    with self._cond:
                        self._error = err
                deadline = time.monotonic() + self._flush_seconds
                with self._cond:
                    self._done = seq
                    self._cond.notify_all()
                if stopping:
                    return
        finally:
            _leave_wal(self._conn)
            self._conn.close()
            self._lock.release()

    def _batch_due(self) -> bool:
        pending = self._seq - self._taken
        return (
            self._stopping
            or self._flush_target > self._taken
            or pending >= self._flush_rows
            or self._pending_bytes >= _FLUSH_BYTES
        )

    def _commit(self, batch: _Batch) -> None:
        # blob files first, each renamed into place, so a committed row never points at a missing file
        tensor_rows = []
        for tag, step, wall, arr in batch.tensors:
            meta = (tag, step, wall, *tensor_header(arr))
            if arr.nbytes > self._inline_bytes:
                rel = Path(BLOB_DIR, "tensors", _safe_name(tag), f"{step}-{uuid.uuid4().hex[:8]}.npy")
                _atomic_write(self._run_dir / rel, lambda fh, a=arr: np.save(fh, a, allow_pickle=False))
                tensor_rows.append((*meta, None, rel.as_posix()))
            else:
                tensor_rows.append((*meta, arr.tobytes(), None))
        for *_, rel, payload in batch.media:
            if payload is not None:
                _atomic_write(self._run_dir / rel, lambda fh, p=payload: fh.write(p))
        conn = self._conn
        conn.execute("BEGIN")
        orphans: list[str] = []
        try:
            if batch.discard_after is not None:
                orphans = self._delete_after(batch.discard_after)
            conn.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?)", batch.scalars)
            conn.executemany("INSERT INTO tensors VALUES (?, ?, ?, ?, ?, ?, ?)", tensor_rows)
            conn.executemany("INSERT INTO media VALUES (?, ?, ?, ?, ?)", [m[:5] for m in batch.media])
            conn.executemany(FINDING_INSERT, batch.findings)
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", batch.meta.items())
            if batch.status is not None:
                conn.execute("UPDATE runs SET status = ?", (batch.status,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may already have rolled back
                conn.execute("ROLLBACK")
            raise
        for rel in orphans:  # after the commit: a committed row never points at a missing file
            (self._run_dir / rel).unlink(missing_ok=True)

    def _delete_after(self, step: int) -> list[str]:
        """Delete the rows of steps after ``step`` (inside the open transaction); return their blob paths."""
        conn = self._conn
        blobs = [r[0] for r in conn.execute("SELECT blob FROM tensors WHERE step > ? AND blob IS NOT NULL", (step,))]
        blobs += [r[0] for r in conn.execute("SELECT path FROM media WHERE step > ?", (step,))]
        for table in ("scalars", "tensors", "media"):
            conn.execute(f"DELETE FROM {table} WHERE step > ?", (step,))
        return blobs


def json_safe(value: Any) -> Any:
    """``value`` ready for a meta entry: numpy values unwrapped, arrays and tuples as lists, NaN and ±inf as None.

    A dataclass instance becomes the dict of its fields, so results can be stored as they are.
    """
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_safe(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
