"""Gradient-family attributions: saliency, input × gradient, Integrated Gradients, SmoothGrad wrappers."""

from __future__ import annotations

from dataclasses import dataclass

from deepscope.attribution._autograd import input_grads
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, Context, MethodOutput

__all__ = ["Saliency"]


@ATTRIBUTIONS.register("saliency")
@dataclass(frozen=True)
class Saliency(Attribution):
    """Saliency map (Simonyan, Vedaldi & Zisserman 2014): the gradient magnitude ``|∂f_c/∂x|``.

    Per-channel maps ``(N, C, H, W)``; :meth:`AttributionMap.spatial` sums them, while the paper
    takes the maximum over channels (``maps.amax(1)``).

    Args:
        absolute: return ``|∂f_c/∂x|`` (the paper); ``False`` keeps the signed gradient.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "saliency").maps.shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """

    absolute: bool = True

    def compute(self, ctx: Context) -> MethodOutput:
        result = input_grads(ctx.model, ctx.inputs, ctx.target)
        maps = result.grads.abs() if self.absolute else result.grads
        return MethodOutput(maps=maps, scores=result.scores, output=result.output)
