"""What every demo needs: ``--set key=value`` overrides of its configuration, and a clean output folder."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from deepscope.errors import UnknownNameError
from deepscope.store import delete_run, find_runs

__all__ = ["apply_overrides", "clear_runs"]

C = TypeVar("C")


def apply_overrides(config: C, overrides: Mapping[str, str]) -> C:
    """Return ``config`` with fields replaced by parsed text values (``"seeds": "0,1"`` → ``(0, 1)``).

    Each value is converted to the type of the field's current value; an unknown field or a value
    that does not parse raises with the valid fields and the expected type.
    """
    current = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in current:
            raise UnknownNameError("demo setting", key, current)
        changes[key] = _parse(key, text, current[key])
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def _parse(key: str, text: str, like: Any) -> Any:
    try:
        if isinstance(like, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(like, tuple):
            kind = type(like[0]) if like else str
            return tuple(kind(part) for part in text.split(",") if part.strip())
        return type(like)(text)
    except ValueError:
        expected = (
            f"comma-separated {type(like[0]).__name__}s" if isinstance(like, tuple) and like else type(like).__name__
        )
        raise ValueError(f"demo setting {key}={text!r} is not a valid {expected} (current value: {like!r})") from None


def clear_runs(out_dir: str | os.PathLike[str]) -> int:
    """Delete the run stores a previous demo left in ``out_dir`` (a demo owns its folder); returns how many.

    Without this a second ``make demo`` would add the earlier runs (or stale seeds) to the report.
    """
    try:
        runs = find_runs(out_dir)
    except FileNotFoundError:
        return 0
    return sum(delete_run(run) for run in runs)
