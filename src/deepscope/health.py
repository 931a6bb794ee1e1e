"""Per-layer health of a network during training: activations, gradients, weights and updates.

:class:`LayerHealth` watches one training step out of ``every``: it is *armed* after the step
before (hooks registered, weights copied), takes statistics during the next training forward
pass, and reads gradients and the weight update when that step is reported. Between those steps
no hook is registered, so the training loop runs at full speed. Everything is computed on the
model's device and moved to the host as one ``(statistics, layers)`` table per recorded step.

Statistics (one value per layer; see :data:`STATISTICS`):

- on the output of every watched module: ``act_mean``, ``act_std``, ``act_zero`` (share of
  exact zeros), ``dead_channels`` (share of channels — dim 1 — that are zero for every sample of
  the batch: dead ReLU units) and ``saturation`` (share of outputs within 1 % of the bounds of a
  bounded activation — sigmoid, tanh, hardtanh, ReLU6 —, NaN for unbounded ones). Dead
  channels are measured on activation modules only, over the whole batch. The moments and shares
  are exact up to 131,072 values per output and estimated on evenly spaced samples of the batch
  (about that many values) beyond;
- on the module's own parameters: ``grad_norm`` (L2 norm of their gradients), ``weight_norm``
  and ``update_ratio`` (‖w_after − w_before‖ / ‖w_before‖ over the step: ≈ 1e-3 is the classic
  healthy order of magnitude; far below means a frozen layer, far above an unstable one).

Non-finite values are kept as they are (NaN, inf) so a diverging run shows where it broke.

Under ``torch.distributed`` every rank measures its own batch and the table is the mean over
the ranks (gradient and weight norms are the same on every rank after DDP's all-reduce; the
activation statistics are averages of the ranks' values); distributions are rank 0's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepscope import _distributed as distributed
from deepscope._distributions import summarise, summary_size
from deepscope.hooks import HookSet, first_tensor
from deepscope.layers import model_device, resolve_layers
from deepscope.residual import ResidualFlow

__all__ = ["ACTIVATIONS", "STATISTICS", "HealthTable", "LayerHealth", "default_health_layers", "select_layers"]

ACTIVATION_STATISTICS = ("act_mean", "act_std", "act_zero", "dead_channels", "saturation")
PARAMETER_STATISTICS = ("grad_norm", "weight_norm", "update_ratio")
STATISTICS = ACTIVATION_STATISTICS + PARAMETER_STATISTICS

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign,
)  # fmt: skip
"""Activation modules watched by default (functional activations inside ``forward`` are invisible to hooks)."""

_BOUNDS: dict[type[nn.Module], tuple[float, float]] = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.Hardsigmoid: (0.0, 1.0),
    nn.ReLU6: (0.0, 6.0),
}
_SATURATION_MARGIN = 0.01  # share of the range counted as "at the bound"
_SAMPLE = 1 << 17  # about how many values of one output the moments and shares are computed on


def default_health_layers(model: nn.Module) -> list[str]:
    """Leaf modules that own parameters or are activation functions, in registration order."""
    return [
        name
        for name, module in model.named_modules()
        if name
        and next(module.children(), None) is None
        and (isinstance(module, ACTIVATIONS) or any(True for _ in module.parameters(recurse=False)))
    ]


def select_layers(model: nn.Module, spec: Any) -> list[str]:
    """``True`` (defaults), names or modules, a regular expression ``"re:conv.*"`` on layer names, or module types.

    A type (``nn.Conv2d``) or a tuple of types selects every module of the model that is an instance of one.
    """
    if spec is True:
        return default_health_layers(model)
    if isinstance(spec, type) or (isinstance(spec, tuple) and spec and all(isinstance(t, type) for t in spec)):
        names = [n for n, m in model.named_modules() if n and isinstance(m, spec)]
        if not names:
            kinds = sorted({type(m).__name__ for _, m in model.named_modules()})
            raise ValueError(f"the model has no module of type {spec!r}; its module types: {', '.join(kinds)}")
        return names
    if isinstance(spec, str) and spec.startswith("re:"):
        pattern = re.compile(spec[3:])
        names = [n for n in default_health_layers(model) if pattern.search(n)]
        if not names:
            raise ValueError(f"no layer name matches {spec[3:]!r}; layers: {', '.join(default_health_layers(model))}")
        return names
    specs = [spec] if isinstance(spec, (str, nn.Module)) else list(spec)
    return list(resolve_layers(model, specs))


@dataclass(frozen=True)
class HealthTable:
    """Statistics of one recorded step: ``values[i, j]`` is statistic ``STATISTICS[i]`` of layer ``j``."""

    step: int
    values: Tensor  # (len(STATISTICS), L) float32 on the host; NaN where a statistic does not apply
    nonfinite: bool = False  # a measured value is NaN or infinite: the run is diverging
    residual: Tensor | None = None  # (blocks,) ‖F(x)‖ / ‖skip(x)‖ of the residual blocks
    distributions: Tensor | None = None  # (L, 2, summary) activation and weight summaries (see _distributions)


class LayerHealth:
    """Arm, measure and read per-layer statistics for one step out of ``every`` (see the module docstring).

    Args:
        model: the model being trained.
        layers: dotted names of the watched modules.
        residual: the residual blocks whose ‖F(x)‖ / ‖skip(x)‖ is measured too (see :mod:`deepscope.residual`).
        histogram_bins: with ``> 0``, also summarise the distribution of each layer's output and of
            its weights (range, histogram of that many bins, quantiles; see :mod:`deepscope._distributions`).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        residual: ResidualFlow | None = None,
        *,
        histogram_bins: int = 0,
    ) -> None:
        if isinstance(histogram_bins, bool) or not isinstance(histogram_bins, int) or histogram_bins < 0:
            raise ValueError(f"histogram_bins must be an int >= 0 (0 turns histograms off), got {histogram_bins!r}")
        self.model = model
        self.histogram_bins = histogram_bins
        self.residual = residual
        self.layers = list(layers)
        self.modules = [model.get_submodule(name) for name in self.layers]
        self._params = [list(m.parameters(recurse=False)) for m in self.modules]
        self._bounds = [_bounds_of(m) for m in self.modules]
        self.activation_layers = [
            n for n, m in zip(self.layers, self.modules, strict=True) if isinstance(m, ACTIVATIONS)
        ]
        self._hooks: HookSet | None = None
        self._activations: dict[int, Tensor] = {}
        self._output_summaries: dict[int, Tensor] = {}
        self._before: list[list[Tensor]] | None = None

    @property
    def armed(self) -> bool:
        """Whether the next training step is being measured."""
        return self._hooks is not None

    def arm(self) -> None:
        """Register the forward hooks and copy the weights: the next training step is measured."""
        if self._hooks is not None:
            return
        self._activations, self._output_summaries = {}, {}
        with torch.no_grad():
            self._before = [[p.detach().clone() for p in params] for params in self._params]
        hooks = HookSet()
        for index, module in enumerate(self.modules):
            hooks.forward(module, self._make_hook(index))
        if self.residual is not None:
            self.residual.register(hooks)
        self._hooks = hooks

    def disarm(self) -> None:
        """Remove the hooks (also on errors); safe to call twice."""
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()

    def read(self, step: int) -> HealthTable:
        """Statistics of the measured step: call after the backward pass and the optimiser step."""
        self.disarm()
        device = model_device(self.model)
        with torch.no_grad():
            nan = _nan(len(ACTIVATION_STATISTICS)).to(device)
            columns = [self._activations.get(j, nan).to(device) for j in range(len(self.layers))]
            activations = torch.stack(columns, 1) if columns else nan[:, None][:, :0]  # (5, L)
            parameters = _parameter_statistics(self._params, self._before, device)  # (3, L)
            ratios = self.residual.read(device) if self.residual is not None else torch.empty(0, device=device)
            summaries = self._summaries(device)  # (L, 2, summary) or empty
            packed = torch.cat([activations.flatten(), parameters.flatten(), ratios.float(), summaries.flatten()])
            packed = packed.float().cpu()
        size = len(STATISTICS) * len(self.layers)  # one device-to-host transfer, then split
        if distributed.active():  # statistics: the mean over the ranks; distributions: this rank's (rank 0 writes)
            packed[: size + ratios.numel()] = distributed.mean_across_ranks(packed[: size + ratios.numel()])
        values = packed[:size].view(len(STATISTICS), len(self.layers))
        residual = packed[size : size + ratios.numel()]
        distributions = packed[size + ratios.numel() :].view(summaries.shape) if self.histogram_bins else None
        nonfinite = bool((~torch.isfinite(values) & self._measured()).any() or torch.isinf(residual).any())
        self._activations, self._output_summaries, self._before = {}, {}, None
        return HealthTable(step, values, nonfinite, residual, distributions)

    def _summaries(self, device: torch.device) -> Tensor:
        """``(L, 2, summary)`` distributions of each layer's output and weights (NaN rows where absent)."""
        if not self.histogram_bins:
            return torch.empty(0, device=device)
        blank = torch.full((summary_size(self.histogram_bins),), float("nan"), device=device)
        rows = []
        for j, params in enumerate(self._params):
            weights = torch.cat([p.detach().reshape(-1) for p in params]) if params else None
            weight_summary = summarise(_sample(weights), self.histogram_bins) if weights is not None else blank
            rows.append(torch.stack([self._output_summaries.get(j, blank).to(device), weight_summary]))
        return torch.stack(rows) if rows else torch.empty(0, 2, blank.numel(), device=device)

    def _measured(self) -> Tensor:
        """``(statistics, layers)`` mask of the values that were measured (the others are NaN by design)."""
        mask = torch.zeros(len(STATISTICS), len(self.layers), dtype=torch.bool)
        for j, params in enumerate(self._params):
            if j in self._activations:
                mask[:3, j] = True  # mean, std, zeros
                mask[3, j] = self.layers[j] in self.activation_layers  # dead channels
                mask[4, j] = self._bounds[j] is not None  # saturation
            if params:
                offset = len(ACTIVATION_STATISTICS)
                mask[offset, j] = any(p.grad is not None for p in params)
                mask[offset + 1, j] = True
                mask[offset + 2, j] = self._before is not None
        return mask

    def _make_hook(self, index: int) -> Any:
        bounds = self._bounds[index]
        units = isinstance(self.modules[index], ACTIVATIONS)
        nonnegative = isinstance(self.modules[index], (nn.ReLU, nn.ReLU6))

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if index in self._activations:  # a module called twice per step: keep the first call
                return
            tensor = first_tensor(output)
            if tensor is not None and tensor.is_floating_point():
                self._activations[index] = _activation_statistics(
                    tensor.detach(), bounds, units=units, nonnegative=nonnegative
                )
                if self.histogram_bins:
                    self._output_summaries[index] = summarise(_sample(tensor.detach()), self.histogram_bins)

        return hook


def _bounds_of(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return float(module.min_val), float(module.max_val)
    return next((b for kind, b in _BOUNDS.items() if isinstance(module, kind)), None)


def _activation_statistics(
    a: Tensor, bounds: tuple[float, float] | None, *, units: bool, nonnegative: bool = False
) -> Tensor:
    """``(5,)`` mean, std, share of zeros, share of dead channels, saturation of one output, on its device.

    This runs on the training step itself, so it stays cheap: the moments and shares come from
    evenly spaced samples of the batch, about :data:`_SAMPLE` values (all of them for smaller outputs),
    and dead channels (minimum and maximum per channel over the whole batch) are measured on
    activation modules only (``units``), where they mean something; NaN elsewhere.
    """
    sample = _sample(a)
    n = sample.numel()
    total, squares = sample.sum().double(), torch.dot(sample, sample).double()
    mean = total / n
    std = ((squares - total * mean) / max(n - 1, 1)).clamp_min(0).sqrt()
    zero = (sample == 0).sum() / n
    nan = torch.full((), float("nan"), device=a.device)
    dead = nan
    if units:  # dead units: channels (dim 1) that are zero for every sample and position of the batch
        if a.ndim >= 2:
            others = (0, *range(2, a.ndim))
            silent = a.amax(dim=others) == 0
            if not nonnegative:  # ReLU outputs are >= 0: a maximum of 0 already means all zeros (one pass, not two)
                silent &= a.amin(dim=others) == 0
            dead = silent.sum() / a.shape[1]
        else:
            dead = zero
    saturation = nan
    if bounds is not None:
        low, high = bounds
        margin = _SATURATION_MARGIN * (high - low)
        saturation = ((sample <= low + margin) | (sample >= high - margin)).sum() / n
    return torch.stack([mean.float(), std.float(), zero.float(), dead.float(), saturation.float()])


def _sample(a: Tensor) -> Tensor:
    """About :data:`_SAMPLE` values of ``a`` as a flat float tensor (all of them when it is smaller)."""
    # whole samples of the batch (contiguous in memory, so cache-friendly), every ⌈numel / _SAMPLE⌉-th
    rows = a[:: math.ceil(a.numel() / _SAMPLE)] if a.ndim >= 2 and a.numel() > _SAMPLE else a
    sample = rows.reshape(-1).float()
    return sample[:: max(1, sample.numel() // _SAMPLE)]


def _nan(n: int) -> Tensor:
    return torch.full((n,), float("nan"))


def _parameter_statistics(
    params: Sequence[Sequence[Tensor]], before: Sequence[Sequence[Tensor]] | None, device: torch.device
) -> Tensor:
    """``(3, L)`` gradient norm, weight norm and update ratio of each module's own parameters (NaN without any).

    All the norms of a step come from a few ``torch._foreach_norm`` calls, whatever the number of layers.
    """
    out = torch.full((len(PARAMETER_STATISTICS), len(params)), float("nan"), device=device)
    flat = [p for group in params for p in group]
    if not flat:
        return out
    owner = torch.tensor([j for j, group in enumerate(params) for _ in group], device=device)

    def per_layer(norms: Sequence[Tensor], rows: Tensor) -> Tensor:
        """Combine per-tensor norms into one norm per layer (NaN for a layer without any)."""
        squares = torch.stack([n.float() for n in norms]).square()
        total = torch.zeros(len(params), device=device).index_add_(0, rows, squares)
        count = torch.zeros(len(params), device=device).index_add_(0, rows, torch.ones_like(squares))
        return torch.where(count > 0, total.sqrt(), torch.full_like(total, float("nan")))

    with_grad = [i for i, p in enumerate(flat) if p.grad is not None]
    if with_grad:
        grads = [flat[i].grad for i in with_grad]
        out[0] = per_layer(torch._foreach_norm(grads), owner[with_grad])
    weights = [p.detach() for p in flat]
    out[1] = per_layer(torch._foreach_norm(weights), owner)
    if before is not None:
        old = [b for group in before for b in group]
        moved = per_layer(torch._foreach_norm(torch._foreach_sub(weights, old)), owner)
        out[2] = moved / per_layer(torch._foreach_norm(old), owner)
    return out
