"""Shared by the methods that evaluate the model on many copies of the inputs.

Integrated Gradients (its path) and SmoothGrad (its noisy copies) lay the copies out on a
``(copies, N)`` grid and push rectangular blocks of at most ``batch_size`` of them through the
model at once: memory is bounded by ``batch_size`` and there is no Python loop per copy. The
class explained stays the one fixed at the unmodified inputs, and random draws come from the
caller's generator (never the global RNG).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from deepscope.attribution._autograd import input_grads
from deepscope.targets import ClassTarget, PredictedClass, Target


def blocks(copies: int, n: int, batch_size: int) -> Iterator[tuple[int, int, int, int]]:
    """Cover the ``(copies, n)`` grid with blocks ``[c0:c1] × [n0:n1]`` of at most ``batch_size`` items.

    Copies are visited in order and every sample of copy ``c`` comes before any sample of copy
    ``c + 1``, so at the start of a block each of its samples has seen exactly ``c0`` copies.
    """
    if batch_size >= n:
        per_block = batch_size // n
        for c0 in range(0, copies, per_block):
            yield c0, min(c0 + per_block, copies), 0, n
    else:
        for c in range(copies):
            for n0 in range(0, n, batch_size):
                yield c, c + 1, n0, min(n0 + batch_size, n)


@dataclass(frozen=True)
class FixedTarget:
    """The user's target with its classes fixed at the unmodified inputs, for copies of the inputs.

    A class target keeps its per-sample classes; the predicted class is the one predicted at the
    inputs (not at each noisy or interpolated copy). A custom callable is used as is on any batch
    of copies, so it must score each sample on its own.
    """

    target: Target
    classes: tuple[int, ...] | None  # one per sample, or None: use `target` unchanged

    @classmethod
    def at(cls, target: Target, output: Tensor) -> FixedTarget:
        if isinstance(target, PredictedClass):
            logits = output.flatten(1) if output.ndim > 1 else output[:, None]  # (N, K)
            indices = logits.argmax(dim=1) if logits.shape[1] > 1 else torch.zeros(len(logits), dtype=torch.long)
            return cls(target, tuple(indices.tolist()))
        if isinstance(target, ClassTarget) and not isinstance(target.indices, int):
            return cls(target, tuple(target.indices))  # type: ignore[arg-type]
        return cls(target, None)

    def select(self, samples: list[int]) -> FixedTarget:
        """The target of a subset of the samples."""
        if self.classes is None:
            return self
        return FixedTarget(self.target, tuple(self.classes[i] for i in samples))

    def block(self, n0: int, n1: int, copies: int) -> Target:
        """The target of ``copies`` stacked copies of samples ``n0:n1`` (copy-major layout)."""
        if self.classes is None:
            return self.target
        return ClassTarget(self.classes[n0:n1] * copies)


def block_grads(model: nn.Module, points: Tensor, target: Target) -> Tensor:
    """Input gradients of a block of copies, checking that the target scored every copy."""
    result = input_grads(model, points, target)
    if result.scores.shape[0] != points.shape[0]:
        raise ValueError(
            f"the target returned {result.scores.shape[0]} scores for a batch of {points.shape[0]} copies of the "
            "inputs; a callable target must score each sample on its own (e.g. lambda out: out[:, 3])"
        )
    return result.grads


def per_sample(values: Tensor, ndim: int) -> Tensor:
    """``(N,)`` -> ``(N, 1, ..., 1)`` broadcastable against an ``ndim``-dimensional batch."""
    return values.view(-1, *([1] * (ndim - 1)))


def value_range(x: Tensor) -> Tensor:
    """``max − min`` of each sample, ``(N,)``."""
    flat = x.flatten(1)
    return flat.amax(dim=1) - flat.amin(dim=1)


def default_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The caller's generator, or a fresh one seeded from the OS (the global RNG is never used)."""
    if generator is not None:
        return generator
    fresh = torch.Generator(device=device)
    fresh.seed()
    return fresh


def check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def draw_random(
    kind: Literal["normal", "uniform"], shape: tuple[int, ...], like: Tensor, generator: torch.Generator
) -> Tensor:
    """Standard normal or U[0, 1) samples drawn on the generator's device, returned on ``like``'s."""
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
