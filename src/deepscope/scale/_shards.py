"""Cut a dataset into shards of consecutive items, and give each shard its own view and seed.

A shard is a range of dataset positions. Every backend runs the same shards, so a statistic merged
from per-shard partial results, and anything random drawn from a shard's seed, is the same whether
the shards ran one after the other in this process or spread over a Ray cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from deepscope._data import dataset_size, indexable

__all__ = ["Shard", "plan", "shard_seed", "sized", "view"]


@dataclass(frozen=True, slots=True)
class Shard:
    """Items ``start`` to ``stop - 1`` of the dataset: the ``index``-th shard."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan(size: int, shard_size: int) -> list[Shard]:
    """Consecutive shards of ``shard_size`` items (the last one shorter) covering ``range(size)``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if size < 1:
        raise ValueError("data holds no item")
    return [Shard(i, start, min(start + shard_size, size)) for i, start in enumerate(range(0, size, shard_size))]


def shard_seed(seed: int, shard: int) -> int:
    """A 63-bit seed for one shard, independent of the others (NumPy's ``SeedSequence`` of ``(seed, shard)``)."""
    return int(np.random.SeedSequence([int(seed), int(shard)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sized(data: Any) -> int:
    """The number of items of data a backend can cut into shards (which must be found again by position)."""
    size = dataset_size(data)
    if size is None or not indexable(data):
        raise ValueError(
            "sharding needs data whose items can be found by position: a tensor, an (inputs, labels) pair, a "
            "map-style dataset or an unshuffled DataLoader over one (not a shuffled or iterable loader)"
        )
    return size


def view(data: Any, shard: Shard) -> Any:
    """The shard's items, in the same form as ``data`` (a slice, a pair of slices, a ``Subset``, a loader of one)."""
    if isinstance(data, Tensor):
        return data[shard.start : shard.stop]
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0][shard.start : shard.stop], data[1][shard.start : shard.stop]
    positions = range(shard.start, shard.stop)
    if isinstance(data, DataLoader):
        return DataLoader(
            Subset(data.dataset, positions), batch_size=data.batch_size, collate_fn=data.collate_fn,
            num_workers=data.num_workers, pin_memory=data.pin_memory,
        )  # fmt: skip
    return Subset(data, positions)
