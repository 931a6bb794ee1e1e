"""What both framework callbacks need: the size of a batch, and validation metrics by name."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["batch_size_of", "eval_metrics"]


def batch_size_of(batch: Any) -> int | None:
    """Samples in a batch: the length of its first tensor (a tensor, a sequence or a mapping of them)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = batch_size_of(value)
        if size is not None:
            return size
    return None


def eval_metrics(metrics: Mapping[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, float | Tensor]:
    """The scalar metrics named ``<prefix>…``, keyed without the prefix and its separator (``val_loss`` → ``loss``)."""
    found: dict[str, float | Tensor] = {}
    for name, value in metrics.items():
        if not name.startswith(prefix) or name in skip:
            continue
        short = name[len(prefix) :].lstrip("_/") or name
        if isinstance(value, Tensor) and value.numel() == 1:
            found[short] = value
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            found[short] = float(value)
    return found
