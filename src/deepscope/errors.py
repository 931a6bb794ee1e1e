"""Exceptions raised by deepscope.

Every error a user can cause derives from :class:`DeepscopeError`, so callers can catch
one type; each also derives from the matching built-in (``KeyError``, ``ValueError``…)
so generic handlers keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DeepscopeError",
    "LayerNotFoundError",
    "RunLockedError",
    "SchemaVersionError",
    "ShardsFailedError",
    "UnknownNameError",
    "close_matches",
]

_LIST_ALL_UP_TO = 20  # longer lists of valid names are summarised by their count


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name``, best first.

    Uses difflib's ratio first; when nothing is close enough (e.g. a very short or very
    different name), falls back to candidates that contain ``name`` or share its last
    dotted component, so a suggestion list is rarely empty.
    """
    pool = list(dict.fromkeys(candidates))
    best = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if len(best) < n:
        tail = name.rsplit(".", 1)[-1]
        for cand in pool:
            if cand not in best and (name in cand or cand.rsplit(".", 1)[-1] == tail):
                best.append(cand)
            if len(best) == n:
                break
    return best


class DeepscopeError(Exception):
    """Base class of every error deepscope raises on purpose."""


class UnknownNameError(DeepscopeError, KeyError):
    """A name (method, demo, check…) is not in the registry it was looked up in."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        self.suggestions = close_matches(name, self.valid)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        listed = ", ".join(self.valid) if len(self.valid) <= _LIST_ALL_UP_TO else f"{len(self.valid)} names"
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid: {listed or '(none)'}.")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class LayerNotFoundError(DeepscopeError, KeyError):
    """A layer name does not match any ``named_modules()`` path of the model."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        names = [v for v in valid if v]
        self.suggestions = close_matches(name, names)
        if self.suggestions:
            hint = "Closest valid names: " + ", ".join(repr(s) for s in self.suggestions)
        elif names:  # nothing close: show where to start
            more = f" and {len(names) - _LIST_ALL_UP_TO} more" if len(names) > _LIST_ALL_UP_TO else ""
            hint = "Valid names: " + ", ".join(repr(s) for s in names[:_LIST_ALL_UP_TO]) + more
        else:
            hint = "The model has no named sub-modules"
        super().__init__(
            f"no layer named {name!r} in the model. {hint}. "
            "Run `deepscope layers MODEL` or `deepscope.list_layers(model)` to see them all."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class SchemaVersionError(DeepscopeError, ValueError):
    """A run store was written with a schema version this deepscope cannot read."""


class RunLockedError(DeepscopeError, RuntimeError):
    """A run store already has a live writer (another process or another writer in this one)."""


class ShardsFailedError(DeepscopeError, RuntimeError):
    """Shards of a dataset-wide analysis failed after their retries; the message says which."""
