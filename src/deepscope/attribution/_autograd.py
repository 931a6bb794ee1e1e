"""The only place attribution methods touch autograd and hooks (STYLE principle 2).

Methods call :func:`input_grads` (gradient of the target score with respect to the input) or
:func:`layer_acts_and_grads` (activations of one or more layers and the gradient of the target
score with respect to them). Both run inside the caller's :func:`deepscope.guard.preserved` block.

``layer_acts_and_grads`` works at the cost floor of DESIGN §4: the trunk up to the first hooked
layer runs under ``torch.no_grad()``; a forward hook switches grad mode on and replaces that
layer's output by a detached leaf that requires grad, so autograd records only the head and the
backward pass stops at the layer: about one forward pass in total.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.hooks import HookSet, first_tensor
from deepscope.targets import Target

__all__ = ["LayerGrads", "ScoredGrads", "forward_scores", "input_grads", "layer_acts_and_grads", "output_tensor"]


@dataclass(frozen=True)
class ScoredGrads:
    """Gradient of the target scores with respect to the input, with the scores and the output."""

    grads: Tensor  # same shape as the input
    scores: Tensor  # (N,)
    output: Tensor  # model output, detached


@dataclass(frozen=True)
class LayerGrads:
    """Activations of the hooked layers and the gradients of the target scores with respect to them."""

    acts: list[Tensor]  # one per layer, as the layer produced it, e.g. (N, C, h, w); detached
    grads: list[Tensor]  # same shapes as acts
    scores: Tensor  # (N,)
    output: Tensor  # model output, detached


def _scores(target: Target, output: Any) -> Tensor:
    scores = target(output)
    if not isinstance(scores, Tensor) or scores.ndim != 1:
        raise ValueError(
            f"a target must return one score per sample, shape (N,); got "
            f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("the model produced NaN or infinite scores for the target; check the model and its inputs")
    return scores


def output_tensor(output: Any) -> Tensor:
    """The model's output tensor (detached): the output itself, its ``.logits``, or its first tensor."""
    tensor = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    if not isinstance(tensor, Tensor):
        tensor = first_tensor(output)
    if tensor is None:
        raise TypeError(f"the model returned {type(output).__name__}, which holds no tensor")
    return tensor.detach()


def forward_scores(model: nn.Module, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor]:
    """Target scores and the model output for ``inputs`` without building a graph."""
    with torch.inference_mode():
        output = model(inputs)
        return _scores(target, output).clone(), output_tensor(output).clone()


def input_grads(model: nn.Module, inputs: Tensor, target: Target, *, create_graph: bool = False) -> ScoredGrads:
    """``∂ target(model(x)) / ∂x`` for every sample at once (the scores are summed: samples are independent)."""
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        output = model(x)
        scores = _scores(target, output)
        (grads,) = torch.autograd.grad(scores.sum(), x, create_graph=create_graph)
    return ScoredGrads(grads=grads, scores=scores.detach(), output=output_tensor(output))


def layer_acts_and_grads(
    model: nn.Module,
    layers: Sequence[nn.Module],
    inputs: Tensor,
    target: Target,
    *,
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> LayerGrads:
    """Activations of ``layers`` and the gradients of the target scores with respect to them.

    Args:
        model: the model (in the caller's guard, usually in eval mode).
        layers: modules whose first tensor output is explained; each must run once per forward.
        inputs: the batch.
        target: per-sample score.
        reshape: optional map from a layer's output to ``(N, C, H, W)`` (e.g. ViT tokens), applied
            to the activations and gradients returned.
    """
    captured: dict[int, Tensor] = {}

    def make_hook(index: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            tensor = first_tensor(output)
            if tensor is None:
                raise TypeError(f"layer {type(_module).__name__} returned no tensor, so it cannot be explained")
            if index in captured:
                raise RuntimeError(
                    f"layer {type(_module).__name__} ran twice in one forward pass; choose a layer that runs once"
                )
            if not torch.is_grad_enabled():  # the first hooked layer: start recording here
                torch.set_grad_enabled(True)
                tensor = tensor.detach().requires_grad_(True)
            captured[index] = tensor
            # The model goes on with a copy: a later in-place op (ReLU(inplace=True)) must not touch what we keep.
            return _replace_first_tensor(output, tensor.clone())

        return hook

    grad_mode = torch.is_grad_enabled()
    try:
        with HookSet() as hooks:
            for index, layer in enumerate(layers):
                hooks.forward(layer, make_hook(index))
            torch.set_grad_enabled(False)
            output = model(inputs)
            if len(captured) != len(layers):
                missing = [type(layers[i]).__name__ for i in range(len(layers)) if i not in captured]
                raise RuntimeError(f"layer(s) {', '.join(missing)} did not run during the forward pass")
            scores = _scores(target, output)
            acts = [captured[i] for i in range(len(layers))]
            if not scores.requires_grad:
                raise RuntimeError("the target score does not depend on the chosen layer(s); choose an earlier layer")
            grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
    finally:
        torch.set_grad_enabled(grad_mode)
    grads = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads, acts, strict=True)]
    acts = [a.detach() for a in acts]
    if reshape is not None:
        acts = [reshape(a) for a in acts]
        grads = [reshape(g) for g in grads]
    return LayerGrads(acts=acts, grads=list(grads), scores=scores.detach(), output=output_tensor(output))


def _replace_first_tensor(output: Any, replacement: Tensor) -> Any:
    if isinstance(output, Tensor):
        return replacement
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return type(output)([replacement, *output[1:]]) if isinstance(output, list) else (replacement, *output[1:])
    raise TypeError(f"cannot explain a layer whose output is {type(output).__name__}; pick a layer returning a tensor")
