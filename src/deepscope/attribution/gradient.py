"""Gradient-family attributions: saliency, input × gradient, Integrated Gradients.

Every method here returns per-channel maps ``(N, C, H, W)`` (or ``(N, D)`` for vector inputs),
raw and signed unless stated; :meth:`AttributionMap.normalized` scales them for display.

Integrated Gradients evaluates the model on copies of the inputs along its path, in bounded
blocks (:mod:`deepscope.attribution._copies`); SmoothGrad lives in
:mod:`deepscope.attribution.smoothgrad`.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from deepscope.attribution._autograd import forward_scores, input_grads
from deepscope.attribution._copies import (
    FixedTarget,
    block_grads,
    blocks,
    check_batch_size,
    check_generator,
    default_generator,
    draw_random,
    per_sample,
    value_range,
)
from deepscope.attribution._filters import gaussian_blur
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, Context, MethodOutput

__all__ = ["InputXGradient", "IntegratedGradients", "Saliency", "quadrature"]

QuadratureRule = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre"]
Baseline = Literal["zeros", "blur", "uniform"]

_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre")
_BASELINES = ("zeros", "blur", "uniform")


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


@ATTRIBUTIONS.register("input_x_gradient")
@dataclass(frozen=True)
class InputXGradient(Attribution):
    """Input × Gradient (Shrikumar et al. 2016, "Not Just a Black Box"): ``x ⊙ ∂f_c/∂x``.

    Signed per-channel maps ``(N, C, H, W)``. For a linear model ``f = w·x + b`` the map sums to
    ``f(x) − b``; for a ReLU network without biases it sums to ``f(x)`` (Euler's theorem).

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "input_x_gradient").maps.shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """

    def compute(self, ctx: Context) -> MethodOutput:
        result = input_grads(ctx.model, ctx.inputs, ctx.target)
        return MethodOutput(maps=ctx.inputs * result.grads, scores=result.scores, output=result.output)


# --------------------------------------------------------------------------- Integrated Gradients


def quadrature(rule: QuadratureRule, n: int) -> tuple[Tensor, Tensor]:
    """Nodes ``α`` in [0, 1] and weights of an ``n``-point rule for ``∫₀¹ g(α) dα`` (float64).

    Riemann sums use ``n`` equal cells (left / right ends or midpoints); the trapezoid rule uses
    ``n`` equally spaced nodes including both ends (``n − 1`` cells; weights sum to 1, unlike
    captum 0.9's ``riemann_trapezoid`` whose weights sum to ``(n − 1)/n``); Gauss–Legendre uses
    the ``n`` Legendre nodes, exact for polynomials of degree ``2n − 1``.
    """
    if rule not in _RULES:
        raise ValueError(f"unknown integration rule {rule!r}; valid: {', '.join(map(repr, _RULES))}")
    minimum = 2 if rule == "riemann_trapezoid" else 1
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum:
        raise ValueError(f"rule {rule!r} needs an int number of steps >= {minimum}, got {n!r}")
    steps = torch.arange(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if rule == "riemann_left":
        return steps / n, weights
    if rule == "riemann_right":
        return (steps + 1) / n, weights
    if rule == "riemann_middle":
        return (steps + 0.5) / n, weights
    if rule == "riemann_trapezoid":
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return steps / (n - 1), weights
    import numpy as np

    nodes, gl_weights = np.polynomial.legendre.leggauss(int(n))  # on [-1, 1]
    return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * gl_weights)


@ATTRIBUTIONS.register("integrated_gradients")
@dataclass(frozen=True)
class IntegratedGradients(Attribution):
    """Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

    ``IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂f(x' + α (x − x')) / ∂x_i dα``, the integral evaluated by a
    quadrature rule on ``n_steps`` points of the straight path from the baseline ``x'`` to ``x``.
    Completeness: ``Σ_i IG_i = f(x) − f(x')``; the error of the quadrature,
    ``delta = Σ_i IG_i − (f(x) − f(x'))``, is returned per sample in ``extras["delta"]``.

    The ``n_steps × N`` path points go through the model in blocks of at most ``batch_size``.
    With ``n_steps="auto"`` the steps double from 16 until ``|delta| ≤ tolerance · |f(x) − f(x')|``
    (each sample stops on its own) or ``max_steps`` is reached (with a warning);
    ``extras["n_steps"]`` lists the steps used per sample.

    Args:
        baseline: ``"zeros"``; ``"blur"`` (the input blurred by a Gaussian of ``blur_sigma``
            pixels; images only); ``"uniform"`` (uniform noise within each sample's
            ``[min, max]``, drawn from ``generator``); or a number / tensor broadcastable to the
            inputs.
        n_steps: points on the path, or ``"auto"``.
        rule: ``"gauss_legendre"`` (default: on smooth models its error falls exponentially with
            the steps, the fastest of the rules; on ReLU networks it is on par with the midpoint
            rule), ``"riemann_middle"``, ``"riemann_trapezoid"``, ``"riemann_left"`` or
            ``"riemann_right"`` (see :func:`quadrature`).
        batch_size: most path points evaluated at once.
        tolerance: relative completeness error that ``n_steps="auto"`` aims for.
        max_steps: the most steps ``n_steps="auto"`` tries.
        blur_sigma: Gaussian std in pixels for ``baseline="blur"``.
        generator: random source for ``baseline="uniform"``.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> result = ds.explain(model, images, "integrated_gradients", n_steps=32, baseline="blur")  # doctest: +SKIP
        >>> result.extras["delta"].abs().max()  # doctest: +SKIP
        tensor(0.0012)
    """

    baseline: Baseline | float | Tensor = "zeros"
    n_steps: int | Literal["auto"] = 50
    rule: QuadratureRule = "gauss_legendre"
    batch_size: int = 32
    tolerance: float = 0.01
    max_steps: int = 512
    blur_sigma: float = 10.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if isinstance(self.baseline, str) and self.baseline not in _BASELINES:
            raise ValueError(
                f"unknown baseline {self.baseline!r}; valid: {', '.join(map(repr, _BASELINES))}, a number or a tensor"
            )
        if not isinstance(self.baseline, (str, numbers.Real, Tensor)) or isinstance(self.baseline, bool):
            raise TypeError(f"baseline must be a name, a number or a tensor, got {type(self.baseline).__name__}")
        if self.n_steps == "auto":
            if not 0 < self.tolerance < 1:
                raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance!r}")
            if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 16:
                raise ValueError(f"max_steps must be an int >= 16, got {self.max_steps!r}")
            quadrature(self.rule, 16)  # validates the rule
        else:
            quadrature(self.rule, self.n_steps)  # type: ignore[arg-type]  # validates rule and n_steps
        check_batch_size(self.batch_size)
        if not self.blur_sigma >= 0:
            raise ValueError(f"blur_sigma must be >= 0 pixels, got {self.blur_sigma!r}")
        check_generator(self.generator)

    def compute(self, ctx: Context) -> MethodOutput:
        x = ctx.inputs
        scores, output = forward_scores(ctx.model, x, ctx.target)
        fixed = FixedTarget.at(ctx.target, output)
        base = self._baseline(x)
        base_scores, _ = forward_scores(ctx.model, base, fixed.block(0, len(x), 1))
        gap = scores - base_scores  # (N,) f(x) − f(x')
        if self.n_steps != "auto":
            maps = self._integrate(ctx.model, x, base, fixed, self.n_steps)
            delta = maps.flatten(1).sum(dim=1) - gap
            used = [self.n_steps] * len(x)
        else:
            maps, delta, used = self._integrate_auto(ctx.model, x, base, fixed, gap, scores, base_scores)
        extras = {"delta": delta.detach().float(), "n_steps": used}
        return MethodOutput(maps=maps, scores=scores, output=output, extras=extras)

    def _baseline(self, x: Tensor) -> Tensor:
        if isinstance(self.baseline, Tensor):
            base = self.baseline.detach().to(device=x.device, dtype=x.dtype)
            try:
                return base.broadcast_to(x.shape)
            except RuntimeError:
                raise ValueError(
                    f"the baseline of shape {tuple(base.shape)} does not broadcast to the inputs {tuple(x.shape)}"
                ) from None
        if not isinstance(self.baseline, str):
            return torch.full_like(x, float(self.baseline))
        if self.baseline == "zeros":
            return torch.zeros_like(x)
        if self.baseline == "blur":
            if x.ndim != 4:
                raise ValueError(f"baseline='blur' needs images (N, C, H, W), got inputs of shape {tuple(x.shape)}")
            with torch.no_grad():
                return gaussian_blur(x, self.blur_sigma)
        generator = default_generator(self.generator, x.device)
        low = x.flatten(1).amin(dim=1)
        return per_sample(low, x.ndim) + draw_random("uniform", tuple(x.shape), x, generator) * per_sample(
            value_range(x), x.ndim
        )

    def _integrate(self, model: nn.Module, x: Tensor, base: Tensor, fixed: FixedTarget, n_steps: int) -> Tensor:
        """``(x − x') ⊙ Σ_k w_k ∇f(x' + α_k (x − x'))`` for every sample, in blocks of path points."""
        alphas, weights = (t.to(device=x.device, dtype=x.dtype) for t in quadrature(self.rule, n_steps))
        diff = x - base  # (N, ...)
        avg_grads = torch.zeros_like(x)
        sample_shape = x.shape[1:]
        for s0, s1, n0, n1 in blocks(n_steps, len(x), self.batch_size):
            a = alphas[s0:s1].view(-1, 1, *([1] * len(sample_shape)))  # (s, 1, ...)
            points = (base[n0:n1] + a * diff[n0:n1]).reshape(-1, *sample_shape)  # (s * n, ...)
            grads = block_grads(model, points, fixed.block(n0, n1, s1 - s0))
            grads = grads.view(s1 - s0, -1)  # (s, n * prod(sample_shape))
            avg_grads[n0:n1] += (weights[s0:s1] @ grads).view(n1 - n0, *sample_shape)  # Σ_k w_k ∇f
        return diff * avg_grads

    def _integrate_auto(
        self,
        model: nn.Module,
        x: Tensor,
        base: Tensor,
        fixed: FixedTarget,
        gap: Tensor,
        scores: Tensor,
        base_scores: Tensor,
    ) -> tuple[Tensor, Tensor, list[int]]:
        """Double the steps for the samples whose completeness error is still above the tolerance."""
        # The delta cannot be resolved below the rounding of the scores themselves.
        floor = 8 * torch.finfo(x.dtype).eps * (scores.abs() + base_scores.abs())
        allowed = torch.maximum(self.tolerance * gap.abs(), floor)  # (N,)
        maps = torch.empty_like(x)
        delta = torch.empty_like(gap)
        used = [0] * len(x)
        active = list(range(len(x)))
        n_steps = 16
        while True:
            index = torch.tensor(active, device=x.device)
            part = self._integrate(model, x[index], base[index], fixed.select(active), n_steps)
            maps[index] = part
            delta[index] = part.flatten(1).sum(dim=1) - gap[index]
            for i in active:
                used[i] = n_steps
            open_ = (delta[index].abs() > allowed[index]).tolist()
            active = [i for i, still in zip(active, open_, strict=True) if still]
            if not active or 2 * n_steps > self.max_steps:
                break
            n_steps *= 2
        if active:
            worst = (delta[active].abs() / gap[active].abs().clamp_min(torch.finfo(x.dtype).tiny)).max().item()
            warnings.warn(
                f"Integrated Gradients: {len(active)} sample(s) still have a completeness error above "
                f"tolerance={self.tolerance} after {n_steps} steps (worst relative |delta| {worst:.3g}); "
                "raise max_steps or tolerance, or use rule='gauss_legendre'",
                stacklevel=2,
            )
        return maps, delta, used
