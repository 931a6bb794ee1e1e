"""Targets: which score of the model output an explanation is about.

A target is any callable ``Target = Callable[[output], Tensor]`` that returns one scalar per
sample, shape ``(N,)``. Scores are pre-softmax logits. :func:`as_target` turns what users pass
as ``target=`` into one: ``None`` is the predicted class, an ``int``, a list of ints or an
integer tensor are class indices, and any callable is used as is (e.g. a lambda picking a
regression output or a segmentation region).

An output of shape ``(N,)`` or ``(N, 1)`` is a single logit (a binary classifier before its
sigmoid): class ``0`` is that logit.

Example:
    >>> import torch
    >>> logits = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    >>> as_target(2)(logits)
    tensor([2., 3.])
    >>> as_target([1, 0])(logits)
    tensor([5., 7.])
    >>> as_target(None)(logits)
    tensor([5., 7.])
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassTarget", "PredictedClass", "Target", "as_target"]

Target = Callable[[Any], Tensor]
"""Maps a model output to one score per sample, shape ``(N,)``."""


def _logits(output: Any) -> Tensor:
    """Return the output as ``(N, K)`` logits; ``(N,)`` becomes ``(N, 1)``."""
    if not isinstance(output, Tensor):
        logits = getattr(output, "logits", None)  # e.g. Hugging Face model outputs
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"a class target needs the model output to be a Tensor of logits, got {type(output).__name__}; "
                "pass a callable target that picks the score, e.g. target=lambda out: out[0][:, 3]"
            )
        output = logits
    if output.ndim == 1:
        return output[:, None]  # (N, 1)
    if output.ndim == 2:
        return output
    raise ValueError(
        f"a class target needs an output of shape (N,) or (N, K), got {tuple(output.shape)}; for segmentation, "
        "detection or sequence outputs pass a callable target returning one score per sample, shape (N,)"
    )


def _check_class(index: int, num_classes: int) -> None:
    if index >= num_classes:
        noun = "class" if num_classes == 1 else "classes"
        raise ValueError(
            f"class {index} is out of range for an output with {num_classes} {noun} (valid 0..{num_classes - 1})"
        )


def _as_index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    index = int(value)
    if index < 0:
        raise ValueError(f"{what} must be >= 0, got {index}")
    return index


@dataclass(frozen=True, slots=True)
class ClassTarget:
    """Score of given classes: ``output[i, indices[i]]`` for each sample ``i``.

    Args:
        indices: one class index for every sample (an ``int``), or one per sample (a sequence of
            ints or a 1-D integer tensor). Stored as an ``int`` or a ``tuple`` of ints, so the
            target is hashable and can be recorded as provenance.
    """

    indices: int | Sequence[int] | Tensor
    _max: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        indices: Any = self.indices
        if isinstance(indices, Tensor):
            if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
                raise TypeError(f"class indices must be an integer tensor, got dtype {indices.dtype}")
            if indices.ndim > 1:
                raise ValueError(f"class indices must be a 0-D or 1-D tensor, got shape {tuple(indices.shape)}")
            indices = indices.tolist()
        if isinstance(indices, (str, bytes)) or not isinstance(indices, (numbers.Integral, Sequence)):
            raise TypeError(
                "ClassTarget expects an int, a sequence of ints or a 1-D integer tensor, "
                f"got {type(self.indices).__name__}"
            )
        if isinstance(indices, Sequence):
            if not indices:
                raise ValueError("ClassTarget got an empty list of class indices; give one per sample")
            normalised: int | tuple[int, ...] = tuple(_as_index(v, "a class index") for v in indices)
            largest = max(normalised)
        else:
            normalised = largest = _as_index(indices, "a class index")
        object.__setattr__(self, "indices", normalised)
        object.__setattr__(self, "_max", largest)

    def __call__(self, output: Any) -> Tensor:
        """Return the selected logits, shape ``(N,)``."""
        logits = _logits(output)  # (N, K)
        _check_class(self._max, logits.shape[1])
        if isinstance(self.indices, int):
            return logits[:, self.indices]
        indices = tuple(self.indices)
        if len(indices) != logits.shape[0]:
            raise ValueError(
                f"ClassTarget has {len(indices)} class indices but the output has {logits.shape[0]} samples; "
                "give one index per sample, or a single int for all"
            )
        index = torch.tensor(indices, dtype=torch.long, device=logits.device)  # (N,)
        return logits.gather(1, index[:, None]).squeeze(1)


@dataclass(frozen=True, slots=True)
class PredictedClass:
    """Score of each sample's predicted class: ``output[i, argmax_k output[i, k]]``.

    The argmax is taken on the output this target is called with, so no extra forward runs.
    """

    def __call__(self, output: Any) -> Tensor:
        """Return the largest logit of each sample, shape ``(N,)``."""
        logits = _logits(output)  # (N, K)
        return logits.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)


def as_target(target: Any) -> Target:
    """Turn a user's ``target=`` argument into a :data:`Target`.

    Args:
        target: ``None`` (the predicted class), an ``int`` / sequence of ints / integer tensor
            (class indices, see :class:`ClassTarget`), or a callable ``output -> (N,) scores``.

    Returns:
        A callable mapping the model output to one score per sample.

    Raises:
        TypeError: ``target`` is none of the above.
    """
    if target is None:
        return PredictedClass()
    if isinstance(target, bool):
        raise TypeError("target must not be a bool; pass a class index (int) instead")
    if isinstance(target, (numbers.Integral, Tensor, list, tuple)):
        return ClassTarget(target)
    if callable(target):
        return target
    raise TypeError(
        "target must be None (predicted class), an int, a list of ints, an integer tensor of class indices, "
        f"or a callable mapping the model output to (N,) scores; got {type(target).__name__}"
    )
