"""One writer per run: an advisory lock on ``<run_dir>/run.lock``, released by the OS when the writer dies.

A second :class:`~deepscope.store.RunWriter` on the same run (another process, or the same one)
is refused with :class:`~deepscope.errors.RunLockedError`. Because the operating system drops the
lock of a killed process, a run whose status is still ``"running"`` but whose lock is free was
interrupted (killed, out of memory, power cut) and can be resumed. ``fcntl`` locks exist on Linux
and macOS; elsewhere writers are not locked. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from deepscope.errors import RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILENAME", "WriterLock", "writer_alive"]

LOCK_FILENAME = "run.lock"
_ATTEMPTS = 10


class WriterLock:
    """Hold the writer lock of ``run_dir`` until :meth:`release` (raises if another writer holds it)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILENAME
        self._fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_exclusive(fd):
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another writer"
            os.close(fd)
            raise RunLockedError(
                f"{run_dir} is being written by {holder}; one run has one writer at a time. Wait for it to "
                "finish, stop it, or record into another run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent); the lock file stays, empty of meaning once unlocked."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _try_exclusive(fd: int) -> bool:
    """Take the exclusive lock, retrying briefly: a reader's :func:`writer_alive` probe holds it for microseconds."""
    for _ in range(_ATTEMPTS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.02)
    return False


def writer_alive(run_dir: Path) -> bool:
    """Whether a writer currently holds the lock of ``run_dir`` (True when locks are unsupported: unknown)."""
    if fcntl is None:
        return True
    path = run_dir / LOCK_FILENAME
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
