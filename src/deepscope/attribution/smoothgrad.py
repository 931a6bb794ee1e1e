"""SmoothGrad and its variants around any input-space method (Smilkov et al. 2017).

The ``n_samples × N`` noisy copies of the inputs are laid out on a ``(copies, N)`` grid and go
through the wrapped method in blocks of at most ``batch_size``, like Integrated Gradients' path
in :mod:`deepscope.attribution.gradient`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from deepscope.attribution._autograd import forward_scores
from deepscope.attribution._copies import (
    FixedTarget,
    blocks,
    check_batch_size,
    check_generator,
    default_generator,
    draw_random,
    per_sample,
    value_range,
)
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, Context, MethodOutput, build_method

__all__ = ["SmoothGrad", "smooth"]

Noise = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
_NOISES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class _ShiftedMoments:
    """Running ``Σ (m − ref)`` and ``Σ (m − ref)²`` per sample, ``ref`` being the sample's first map.

    Shifting by a value close to the mean keeps the variance accurate (no cancellation between
    large squares) and makes the statistics exact when every map equals the first one.
    """

    def __init__(self, n: int, first_block: Tensor) -> None:
        shape = (n, *first_block.shape[2:])  # first_block: (copies, samples, *map)
        self.ref = torch.zeros(shape, dtype=first_block.dtype, device=first_block.device)
        self.total = torch.zeros_like(self.ref)
        self.squares = torch.zeros_like(self.ref)

    def add(self, maps: Tensor, n0: int, n1: int, *, first: bool, squares: bool) -> None:
        """Add a ``(copies, n1 − n0, *map)`` block of maps of samples ``n0:n1``."""
        if first:
            self.ref[n0:n1] = maps[0]
        shift = maps - self.ref[n0:n1]  # (c, n, *map)
        self.total[n0:n1] += shift.sum(dim=0)
        if squares:
            self.squares[n0:n1] += shift.square().sum(dim=0)

    def mean_and_variance(self, count: int) -> tuple[Tensor, Tensor]:
        """The mean and the population variance (clamped at 0 against rounding) of ``count`` maps."""
        mean_shift = self.total / count
        variance = (self.squares / count - mean_shift.square()).clamp_min(0)
        return self.ref + mean_shift, variance


@ATTRIBUTIONS.register("smoothgrad")
@dataclass(frozen=True)
class SmoothGrad(Attribution):
    """SmoothGrad (Smilkov et al. 2017) around any input-space method, with its SmoothGrad² and VarGrad variants.

    With ``M`` the wrapped method and ``ε_i ~ N(0, σ²)``, ``σ = sigma · (max x − min x)`` per sample:

    - ``noise="smoothgrad"``: ``(1/n) Σ_i M(x + ε_i)`` (Smilkov et al. 2017);
    - ``noise="smoothgrad_sq"``: ``(1/n) Σ_i M(x + ε_i)²`` (SmoothGrad², Hooker et al. 2019);
    - ``noise="vargrad"``: ``(1/n) Σ_i (M(x + ε_i) − mean)²`` (VarGrad, Adebayo et al. 2018), ≥ 0.

    The class explained is fixed at the clean inputs (the predicted class of ``x``, not of each
    noisy copy). The ``n_samples × N`` noisy copies go through the wrapped method in blocks of at
    most ``batch_size`` (also passed down as the wrapped method's own ``batch_size`` unless
    ``base_params`` sets it); the noise is drawn from ``generator`` (the wrapped method gets it
    too if it takes one and ``base_params`` does not set it). Moments are accumulated around the
    first copy's map, so ``sigma=0`` reproduces the wrapped method and VarGrad is exactly 0.
    ``extras["sigma"]`` holds the absolute noise std of each sample.

    Args:
        base: registry key of the wrapped input-space method (``"saliency"``,
            ``"integrated_gradients"``, ``"guided_backprop"``…).
        base_params: the wrapped method's parameters.
        noise: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
        n_samples: noisy copies per input.
        sigma: noise std as a fraction of each sample's value range (paper: 0.10–0.20).
        batch_size: most noisy copies evaluated at once.
        generator: random source of the noise; ``None`` draws a fresh OS seed (never the global RNG).

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> import torch
        >>> from deepscope.attribution import smooth
        >>> method = smooth("integrated_gradients", n_samples=10, generator=torch.Generator().manual_seed(0))
        >>> ds.explain(model, images, method).maps.shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """

    base: str = "saliency"
    base_params: dict[str, Any] = field(default_factory=dict)
    noise: Noise = "smoothgrad"
    n_samples: int = 50
    sigma: float = 0.15
    batch_size: int = 32
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base_params, dict):
            raise TypeError(f"base_params must be a dict, got {type(self.base_params).__name__}")
        if self.configured_base().needs_layer:  # also validates the key and the parameters
            raise ValueError(
                f"SmoothGrad wraps input-space methods; {self.base!r} explains a layer (noise the input of "
                "a CAM yourself, or pick one of the gradient methods)"
            )
        if self.noise not in _NOISES:
            raise ValueError(f"unknown noise {self.noise!r}; valid: {', '.join(map(repr, _NOISES))}")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, numbers.Integral) or self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {self.n_samples!r}")
        if not (isinstance(self.sigma, numbers.Real) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a finite fraction >= 0 of the input range, got {self.sigma!r}")
        check_batch_size(self.batch_size)
        check_generator(self.generator)

    def configured_base(self) -> Attribution:
        """The wrapped method, configured (``batch_size`` and ``generator`` passed down where it takes them)."""
        params = dict(self.base_params)
        cls = ATTRIBUTIONS.get(self.base)
        accepted = getattr(cls, "__dataclass_fields__", {})
        if "batch_size" in accepted:
            params.setdefault("batch_size", self.batch_size)
        if "generator" in accepted:
            params.setdefault("generator", self.generator)
        return build_method(self.base, params)[1]

    def compute(self, ctx: Context) -> MethodOutput:
        x = ctx.inputs
        wrapped = self.configured_base()
        scores, output = forward_scores(ctx.model, x, ctx.target)
        fixed = FixedTarget.at(ctx.target, output)
        generator = default_generator(self.generator, x.device)
        sigma = self.sigma * value_range(x)  # (N,) absolute std per sample
        sample_shape = x.shape[1:]
        moments: _ShiftedMoments | None = None
        for c0, c1, n0, n1 in blocks(self.n_samples, len(x), self.batch_size):
            copies = c1 - c0
            noise = draw_random("normal", (copies, n1 - n0, *sample_shape), x, generator)
            noisy = (x[n0:n1] + noise * per_sample(sigma[n0:n1], x.ndim)).reshape(-1, *sample_shape)  # (c*n, ...)
            block = Context(model=ctx.model, inputs=noisy, target=fixed.block(n0, n1, copies), layers={})
            maps = wrapped.compute(block).maps.detach()
            maps = maps.view(copies, n1 - n0, *maps.shape[1:])  # (c, n, *map)
            if moments is None:
                moments = _ShiftedMoments(len(x), maps)
            moments.add(maps, n0, n1, first=c0 == 0, squares=self.noise != "smoothgrad")
        if moments is None:  # unreachable: n_samples >= 1 is validated
            raise RuntimeError("SmoothGrad evaluated no noisy copy")
        mean, variance = moments.mean_and_variance(self.n_samples)
        if self.noise == "smoothgrad":
            result = mean
        elif self.noise == "smoothgrad_sq":
            result = variance + mean.square()  # E[m²]
        else:
            result = variance
        return MethodOutput(maps=result, scores=scores, output=output, extras={"sigma": sigma.detach().float()})


def smooth(
    method: str,
    *,
    noise: Noise = "smoothgrad",
    n_samples: int = 50,
    sigma: float = 0.15,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    **method_params: Any,
) -> SmoothGrad:
    """A configured :class:`SmoothGrad` around ``method``, to pass to :func:`explain` as the method.

    Args:
        method: registry key of the wrapped input-space method.
        noise: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
        n_samples: noisy copies per input.
        sigma: noise std as a fraction of each sample's value range.
        batch_size: most noisy copies evaluated at once (also the wrapped method's ``batch_size``).
        generator: random source of the noise.
        **method_params: the wrapped method's parameters (e.g. ``n_steps=16``).

    Returns:
        The configured method.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, smooth("integrated_gradients", n_samples=10, n_steps=16))  # doctest: +SKIP
    """
    return SmoothGrad(
        base=method,
        base_params=method_params,
        noise=noise,
        n_samples=n_samples,
        sigma=sigma,
        batch_size=batch_size,
        generator=generator,
    )
