"""A small per-run result cache for panels: entries are dropped as soon as the run's store changes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

from deepscope.server._api import signature
from deepscope.store import RunReader

__all__ = ["RunCache"]

T = TypeVar("T")


class RunCache:
    """LRU of ``compute()`` results keyed by run folder, the store's change signature and ``key``.

    A live run's new commit changes its signature, so its entries are recomputed; thread-safe.

    Args:
        size: the most entries kept.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, reader: RunReader, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached result for ``key`` in ``reader``'s run, or ``compute()`` (then kept)."""
        full = (str(reader.run_dir), signature(reader.run_dir), key)  # the signature first: a later commit re-reads
        with self._lock:
            if full in self._entries:
                self._entries.move_to_end(full)
                return self._entries[full]  # type: ignore[return-value]
        value = compute()
        with self._lock:
            self._entries[full] = value
            self._entries.move_to_end(full)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value
