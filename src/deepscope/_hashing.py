"""Content hashes of dataset items, to find the same sample in two splits (data leakage).

An item is hashed by its bytes: an array or tensor row (dtype and shape included), or a file's
content when the split is a list of paths. Datasets yielding ``(input, label)`` pairs are hashed
by their input. No torch import: tensors convert through ``numpy.asarray``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["duplicates_across", "item_hashes"]


def item_hashes(split: Any) -> list[bytes]:
    """One digest per item of ``split``: an array/tensor (first axis: items), a sequence of paths or a dataset."""
    if isinstance(split, (str, os.PathLike)):
        raise TypeError(
            f"a split must hold items (an array, a dataset, a list of paths), got the single path {split!r}"
        )
    if (hasattr(split, "shape") and hasattr(split, "__array__")) or isinstance(split, np.ndarray):
        array = _to_numpy(split)
        return [_digest(row) for row in array]
    items: Iterable[Any] = split if hasattr(split, "__iter__") else (split[i] for i in range(len(split)))
    return [_item_digest(item) for item in items]


def duplicates_across(splits: Mapping[str, Any]) -> dict[tuple[str, str], tuple[int, list[list[int]]]]:
    """Pairs of splits that share items: how many of the second's items are in the first, and 10 index pairs."""
    hashes = {name: item_hashes(split) for name, split in splits.items()}
    names = list(hashes)
    found: dict[tuple[str, str], tuple[int, list[list[int]]]] = {}
    for i, first in enumerate(names):
        where = {digest: index for index, digest in enumerate(hashes[first])}
        for second in names[i + 1 :]:
            pairs = [[where[d], j] for j, d in enumerate(hashes[second]) if d in where]
            if pairs:
                found[(first, second)] = (len(pairs), pairs[:10])
    return found


_INPUT_KEYS = ("input", "inputs", "image", "images", "x", "pixel_values", "input_ids", "text")


def _item_digest(item: Any) -> bytes:
    if isinstance(item, (str, os.PathLike)):
        return hashlib.blake2b(Path(item).read_bytes(), digest_size=16).digest()
    if isinstance(item, (tuple, list)) and item and _is_sample(item[0]):  # (input, label): the input identifies it
        return _item_digest(item[0])
    if isinstance(item, Mapping) and item:  # the input's entry, or else every entry in key order
        key = next((k for k in _INPUT_KEYS if k in item), None)
        if key is not None:
            return _item_digest(item[key])
        parts = b"".join(_item_digest(item[k]) for k in sorted(item, key=str))
        return hashlib.blake2b(parts, digest_size=16).digest()
    return _digest(_to_numpy(item))


def _is_sample(value: Any) -> bool:
    """An input of its own (a file, an array, a tensor, a record), not one number of a feature row."""
    return isinstance(value, (str, os.PathLike, Mapping)) or hasattr(value, "shape")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu()
    return np.ascontiguousarray(np.asarray(value))


def _digest(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.blake2b(header + array.tobytes(), digest_size=16).digest()
