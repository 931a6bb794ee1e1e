"""Stream a dataset in batches of inputs, and fetch items back by index, whatever form it comes in.

Accepted: a tensor ``(N, ...)`` (batched by slicing), a map-style dataset (``__getitem__`` and
``__len__``, items ``x`` or ``(x, label, ...)``) and a ``DataLoader``; for a loader over a
map-style dataset with a sequential sampler the running position is the item's index. Only the
current batch is ever held, so memory does not grow with the dataset. :func:`labelled_batches`
also takes an ``(inputs, labels)`` pair of tensors and yields the labels with the inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler

__all__ = ["batches", "dataset_size", "fetch", "indexable", "inputs_of", "labelled_batches"]


def inputs_of(batch: Any) -> Tensor:
    """The input tensor of a batch or item: itself, or the first element of a ``(x, label, ...)`` pair."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"expected tensors or (input, label) pairs of tensors, got {type(batch).__name__}; pass a tensor, a dataset "
        "of tensors or a DataLoader of them"
    )


def dataset_size(data: Any) -> int | None:
    """Number of items, when known without iterating."""
    if _is_pair(data):
        return int(data[0].shape[0])
    if isinstance(data, Tensor):
        return int(data.shape[0])
    if isinstance(data, DataLoader):
        return len(data.dataset) if _indexable(data) else None  # type: ignore[arg-type]
    return len(data) if hasattr(data, "__len__") else None


def batches(data: Any, batch_size: int) -> Iterator[Tensor]:
    """The inputs of ``data`` in consecutive batches (a loader's own batches when ``data`` is a ``DataLoader``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if _is_pair(data):
        data = data[0]
    if isinstance(data, Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    for batch in _loader(data, batch_size):
        yield inputs_of(batch)


def _loader(data: Any, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return DataLoader(data, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]
    raise TypeError(f"data must be a tensor, a dataset or a DataLoader, got {type(data).__name__}")


def _is_pair(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def labelled_batches(data: Any, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(inputs, labels)`` batches of an ``(inputs, labels)`` pair of tensors, or of a dataset or loader of pairs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if _is_pair(data):
        inputs, labels = data
        if labels.shape[0] != inputs.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels: pass one label per input")
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start : start + batch_size], labels[start : start + batch_size]
        return
    if isinstance(data, Tensor):
        raise TypeError("labels are needed: pass (inputs, labels), a dataset of (x, y) items or a DataLoader of them")
    for batch in _loader(data, batch_size):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor)):
            raise TypeError(
                f"expected (input, label) items, got {type(batch).__name__}; pass (inputs, labels) tensors, a "
                "dataset of (x, y) pairs or a DataLoader of them"
            )
        yield inputs_of(batch), batch[1]


def fetch(data: Any, indices: Sequence[int]) -> Tensor:
    """The inputs at ``indices`` as one tensor (needs a tensor, a map-style dataset or an unshuffled loader)."""
    if _is_pair(data):
        data = data[0]
    if isinstance(data, Tensor):
        return data[torch.as_tensor(list(indices), dtype=torch.long)]
    if isinstance(data, DataLoader):
        if not _indexable(data):
            raise ValueError(
                "this DataLoader shuffles or has no map-style dataset, so its items cannot be found again by "
                "position: pass the dataset itself, or a DataLoader with shuffle=False"
            )
        data = data.dataset
    return torch.stack([inputs_of(data[int(i)]) for i in indices])


def indexable(data: Any) -> bool:
    """Whether items can be found again by position (fetch works): anything but a shuffled or iterable loader."""
    return not isinstance(data, DataLoader) or _indexable(data)


def _indexable(loader: DataLoader) -> bool:
    return isinstance(loader.sampler, SequentialSampler) and hasattr(loader.dataset, "__getitem__")
