"""Per-layer health of a network during training: activations, gradients, weights and updates.

The ``layer_health`` probe (:class:`LayerHealth`) watches one training step out of ``every``: it is
*armed* after the step before (hooks registered, weights copied), takes raw sums during the next
training forward pass, and reads gradients and the weight update once that step is reported.
Between those steps no hook is registered, so the training loop runs at full speed. Everything
is computed on the model's device; the Recorder moves the ``(statistics, layers)`` table to the
host with the other probes' values in one transfer.

Statistics (one value per layer; see :data:`STATISTICS`):

- on the output of every watched module: ``act_mean``, ``act_std``, ``act_zero`` (share of
  exact zeros), ``dead_channels`` (share of channels — dim 1 — that are zero for every sample of
  the batch: dead ReLU units) and ``saturation`` (share of outputs within 1 % of the bounds of a
  bounded activation — sigmoid, tanh, hardtanh, ReLU6 —, NaN for unbounded ones). Dead
  channels are measured on activation modules only, over the whole batch. The moments and shares
  are exact up to 131,072 values per output and estimated on evenly spaced whole samples of the
  batch (about that many values) beyond;
- on the module's own parameters: ``grad_norm`` (L2 norm of their gradients), ``weight_norm``
  and ``update_ratio`` (‖w_after − w_before‖ / ‖w_before‖ over the step: ≈ 1e-3 is the classic
  healthy order of magnitude; far below means a frozen layer, far above an unstable one).

Non-finite values are kept as they are (NaN, inf) so a diverging run shows where it broke.

The ``distributions`` probe (:class:`Distributions`, ``Recorder(histogram_bins=N)``) adds the
histogram and quantiles of the same layers' outputs and weights at the same steps.

Under ``torch.distributed`` every rank measures its own batch and the table is the mean over
the ranks (gradient and weight norms are the same on every rank after DDP's all-reduce; the
activation statistics are averages of the ranks' values); distributions are rank 0's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepscope._distributions import QUANTILES, summarise, summary_size
from deepscope._probe import Probe, register
from deepscope._store_writer import RunWriter
from deepscope._tags import TAGS
from deepscope.hooks import HookSet, first_tensor
from deepscope.layers import ACTIVATIONS, activation_bounds, model_device, resolve_layers

__all__ = ["ACTIVATIONS", "STATISTICS", "Distributions", "LayerHealth", "default_health_layers", "select_layers"]

ACTIVATION_STATISTICS = ("act_mean", "act_std", "act_zero", "dead_channels", "saturation")
PARAMETER_STATISTICS = ("grad_norm", "weight_norm", "update_ratio")
STATISTICS = ACTIVATION_STATISTICS + PARAMETER_STATISTICS

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


@register("layer_health")
class LayerHealth(Probe):
    """Per-layer statistics of one training step in ``every`` (see the module docstring).

    Tags: ``health/values`` (a ``(statistics, layers)`` table per measured step); meta
    ``health/layers``, ``health/statistics``, ``health/activation_layers``.

    Args:
        model: the model being trained.
        layers: dotted names of the watched modules (see :func:`select_layers`).
    """

    schedule = "measured"
    tags = (TAGS.HEALTH, TAGS.HEALTH_LAYERS, TAGS.HEALTH_STATISTICS, TAGS.HEALTH_ACTIVATION_LAYERS)

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = list(layers)
        self.modules = [model.get_submodule(name) for name in self.layers]
        self._params = [list(m.parameters(recurse=False)) for m in self.modules]
        self._bounds = [activation_bounds(m) for m in self.modules]
        self._units = [isinstance(m, ACTIVATIONS) for m in self.modules]
        self.activation_layers = [n for n, unit in zip(self.layers, self._units, strict=True) if unit]
        self._flat = [p for params in self._params for p in params]
        self._owner = [j for j, params in enumerate(self._params) for _ in params]  # the layer of each parameter
        self._raw: dict[int, tuple[Tensor, int, int]] = {}  # layer -> (raw sums (6,), values seen, dead denominator)
        self._before: list[Tensor] | None = None
        self._before_norms: list[Tensor] = []
        self._mask = np.zeros((len(STATISTICS), len(self.layers)), dtype=bool)  # measured values of the last step
        self._activation_layout: tuple[Any, Any] | None = None  # (key, constants), rebuilt when the key changes
        self._parameter_layout: tuple[Any, Any] | None = None

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        run.set_meta(TAGS.HEALTH_LAYERS, self.layers)
        run.set_meta(TAGS.HEALTH_STATISTICS, list(STATISTICS))
        run.set_meta(TAGS.HEALTH_ACTIVATION_LAYERS, self.activation_layers)

    def arm(self, hooks: HookSet) -> None:
        self._raw = {}
        with torch.no_grad():  # the weights before the step (a copy for the length of one step) and their norms
            self._before = [p.detach().clone() for p in self._flat]
            self._before_norms = torch._foreach_norm(self._before) if self._before else []
        for index, module in enumerate(self.modules):
            hooks.forward(module, self._make_hook(index))

    def measure(self) -> Mapping[str, Tensor]:
        device = model_device(self.model)
        with torch.no_grad():
            activations = self._activation_table(device)  # (5, L)
            parameters = self._parameter_table(device)  # (3, L)
        self._raw, self._before = {}, None
        return {TAGS.HEALTH: torch.cat([activations, parameters])}

    def nonfinite(self, arrays: Mapping[str, np.ndarray]) -> bool:
        return bool((~np.isfinite(arrays[TAGS.HEALTH]) & self._mask).any())

    def _make_hook(self, index: int) -> Any:
        bounds, units = self._bounds[index], self._units[index]
        nonnegative = isinstance(self.modules[index], (nn.ReLU, nn.ReLU6))

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if index in self._raw:  # a module called twice per step: keep the first call
                return
            tensor = first_tensor(output)
            if tensor is not None and tensor.is_floating_point() and tensor.numel():
                self._raw[index] = _raw_statistics(tensor.detach(), bounds, units=units, nonnegative=nonnegative)

        return hook

    def _activation_table(self, device: torch.device) -> Tensor:
        """``(5, L)`` activation statistics from the hooks' raw sums, in a dozen batched operations."""
        table = torch.full((len(ACTIVATION_STATISTICS), len(self.layers)), float("nan"), device=device)
        self._mask[: len(ACTIVATION_STATISTICS)] = False
        if not self._raw:
            return table
        columns = tuple(sorted(self._raw))
        key = (device, columns, *(self._raw[j][1:] for j in columns))
        if self._activation_layout is None or self._activation_layout[0] != key:
            self._activation_layout = (key, self._layout_activations(columns, device))
        denominators, inverse_dof, index, mask = self._activation_layout[1]
        raw = torch.stack([self._raw[j][0].to(device) for j in columns], 1).double()  # (6, measured layers)
        scaled = raw / denominators  # Σd / n, non-zeros / n, dead / channels, saturated / n
        mean = raw[0] + scaled[1]  # sums of d = x - pivot: no cancellation when the mean dwarfs the spread
        var = (raw[2] - raw[1] * scaled[1]) * inverse_dof
        values = torch.stack([mean, var.clamp_min(0).sqrt(), 1 - scaled[3], scaled[4], scaled[5]]).float()
        self._mask[: len(ACTIVATION_STATISTICS)] = mask
        if len(columns) == len(self.layers):
            return values
        return table.index_copy_(1, index, values)

    def _layout_activations(self, columns: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor, Any]:
        """Per-layer constants of :meth:`_activation_table` for these measured layers and output sizes."""
        sizes = [float(self._raw[j][1]) for j in columns]
        channels = [float(self._raw[j][2]) for j in columns]
        ones = [1.0] * len(columns)
        denominators = torch.tensor([ones, sizes, ones, sizes, channels, sizes], dtype=torch.float64, device=device)
        inverse_dof = torch.tensor([1 / max(n - 1, 1) for n in sizes], dtype=torch.float64, device=device)
        mask = np.zeros((len(ACTIVATION_STATISTICS), len(self.layers)), dtype=bool)
        for j in columns:
            mask[:3, j] = True  # mean, std, zeros
            mask[3, j] = self._units[j]  # dead channels
            mask[4, j] = self._bounds[j] is not None  # saturation
        return denominators, inverse_dof, torch.tensor(columns, device=device), mask

    def _parameter_table(self, device: torch.device) -> Tensor:
        """``(3, L)`` gradient norm, weight norm and update ratio of each module's own parameters (NaN without).

        All the norms of a step come from one ``torch._foreach_norm`` call, whatever the number of layers.
        """
        layers = len(self.layers)
        if not self._flat:
            return torch.full((len(PARAMETER_STATISTICS), layers), float("nan"), device=device)
        has_grad = tuple(p.grad is not None for p in self._flat)
        key = (device, has_grad, self._before is not None)
        if self._parameter_layout is None or self._parameter_layout[0] != key:
            self._parameter_layout = (key, self._layout_parameters(has_grad, self._before is not None, device))
        index, present, mask = self._parameter_layout[1]
        weights = [p.detach() for p in self._flat]
        tensors = [p.grad for p in self._flat if p.grad is not None] + weights
        if self._before is not None:
            torch._foreach_sub_(self._before, weights)  # the copies become the moves, in place
            tensors += self._before
        norms = torch._foreach_norm(tensors)
        squares = torch.stack([*norms, *(self._before_norms if self._before is not None else ())]).float().square()
        sums = torch.zeros(4 * layers, device=device).index_add_(0, index, squares)
        norms = torch.where(present, sums.sqrt(), torch.nan).view(4, layers)  # gradients, weights, moves, old weights
        self._mask[len(ACTIVATION_STATISTICS) :] = mask
        return torch.stack([norms[0], norms[1], norms[2] / norms[3]])

    def _layout_parameters(
        self, has_grad: tuple[bool, ...], moved: bool, device: torch.device
    ) -> tuple[Tensor, Tensor, Any]:
        """Where each norm of :meth:`_parameter_table` goes, which rows exist, and the measured mask."""
        layers = len(self.layers)
        rows = [j for j, grad in zip(self._owner, has_grad, strict=True) if grad]  # row 0: gradients
        rows += [layers + j for j in self._owner]  # row 1: weights
        if moved:
            rows += [2 * layers + j for j in self._owner] + [3 * layers + j for j in self._owner]
        present = torch.zeros(4 * layers, dtype=torch.bool)
        present[rows] = True
        mask = np.zeros((len(PARAMETER_STATISTICS), layers), dtype=bool)
        mask[0, [j for j, grad in zip(self._owner, has_grad, strict=True) if grad]] = True
        mask[1, self._owner] = True
        mask[2, self._owner] = moved
        return torch.tensor(rows, device=device), present.to(device), mask


@register("distributions")
class Distributions(Probe):
    """Distributions of each watched layer's output and weights at every measured step, summarised on the device.

    Range, a histogram of ``bins`` equal-width buckets and the quantiles 1/25/50/75/99 % (see
    :mod:`deepscope._distributions`), from samples of the output like the other statistics, with
    fixed-shape operations so a GPU never waits. ``deepscope export-tensorboard`` turns them into
    TensorBoard histograms. Under ``torch.distributed`` these are rank 0's.

    Tags: ``health/distributions`` (``(layers, 2, summary)`` per measured step: output, weights);
    meta ``health/histogram_bins``, ``health/quantile_levels``. The layers are ``health/layers``.
    """

    schedule = "measured"
    tags = (TAGS.DISTRIBUTIONS, TAGS.HISTOGRAM_BINS, TAGS.QUANTILE_LEVELS)
    averaged = False

    def __init__(self, model: nn.Module, layers: Sequence[str], bins: int) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"histogram_bins must be an int >= 1 (0 turns histograms off), got {bins!r}")
        self.model, self.bins = model, bins
        self.modules = [model.get_submodule(name) for name in layers]
        self._params = [list(m.parameters(recurse=False)) for m in self.modules]
        self._outputs: dict[int, Tensor] = {}

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        run.set_meta(TAGS.HISTOGRAM_BINS, self.bins)
        run.set_meta(TAGS.QUANTILE_LEVELS, list(QUANTILES))

    def arm(self, hooks: HookSet) -> None:
        self._outputs = {}
        for index, module in enumerate(self.modules):
            hooks.forward(module, self._make_hook(index))

    def measure(self) -> Mapping[str, Tensor]:
        device = model_device(self.model)
        blank = torch.full((summary_size(self.bins),), float("nan"), device=device)
        rows = []
        with torch.no_grad():
            for j, params in enumerate(self._params):
                weights = torch.cat([p.detach().reshape(-1) for p in params]) if params else None
                weight_summary = summarise(_sample(weights), self.bins) if weights is not None else blank
                rows.append(torch.stack([self._outputs.get(j, blank).to(device), weight_summary]))
        self._outputs = {}
        return {TAGS.DISTRIBUTIONS: torch.stack(rows) if rows else torch.empty(0, 2, blank.numel(), device=device)}

    def nonfinite(self, arrays: Mapping[str, np.ndarray]) -> bool:
        return False  # summaries leave non-finite values out; NaN rows mean "not measured"

    def _make_hook(self, index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if index not in self._outputs and tensor is not None and tensor.is_floating_point():
                self._outputs[index] = summarise(_sample(tensor.detach()), self.bins)

        return hook


def _raw_statistics(
    a: Tensor, bounds: tuple[float, float] | None, *, units: bool, nonnegative: bool
) -> tuple[Tensor, int, int]:
    """Raw sums of one output, on its device, and the two counts that turn them into statistics.

    Returns ``(6,)`` pivot, Σ(x − pivot), Σ(x − pivot)², non-zeros, dead units, saturated values
    (NaN where a statistic does not apply), the number of values summed and the number of units.
    This runs on the training step itself, so it costs a handful of reductions: the moments and
    shares come from whole samples of the batch, about :data:`_SAMPLE` values (all of them for
    smaller outputs); dead channels (never non-zero over the whole batch) are counted on activation
    modules only (``units``), where they mean something; NaN entries where a statistic does not apply.
    """
    sample = _sample(a).float().reshape(-1)  # contiguous (a copy of the sampled rows): the passes below are fast
    pivot = sample[0]
    shifted = sample - pivot
    signs = sample.sign()
    nonzero = signs.sum() if nonnegative else torch.dot(signs, signs)  # NaN stays NaN
    nan = torch.full((), float("nan"), dtype=torch.float32, device=a.device)
    dead, channels = nan, 1
    if units and a.ndim >= 2:  # dead units: channels (dim 1) that are zero for every sample and position
        per_channel = a.shape[1], -1  # the batch dim first, then each channel's positions: the fastest order
        if nonnegative:  # a non-negative channel sums to 0 only when it is all zeros: one pass, not two
            silent = a.sum(0).reshape(per_channel).sum(1) == 0
        else:
            silent = (a.amax(0).reshape(per_channel).amax(1) == 0) & (a.amin(0).reshape(per_channel).amin(1) == 0)
        dead, channels = silent.sum().float(), a.shape[1]
    elif units:  # a 1-D output: each value is a unit, so the dead units are the zeros
        dead, channels = sample.numel() - nonzero, sample.numel()
    saturated = nan
    if bounds is not None:
        low, high = bounds
        margin = _SATURATION_MARGIN * (high - low)
        saturated = ((sample <= low + margin) | (sample >= high - margin)).sum().float()
    raw = torch.stack([pivot, shifted.sum(), torch.dot(shifted, shifted), nonzero, dead, saturated])
    return raw, sample.numel(), channels


def _sample(a: Tensor) -> Tensor:
    """About :data:`_SAMPLE` values of ``a`` (all of them when it is smaller), as a view when possible.

    Whole samples of the batch, every k-th (contiguous rows: cache-friendly); a batch of one
    large sample is strided through instead.
    """
    if a.numel() <= _SAMPLE:
        return a
    k = math.ceil(a.numel() / _SAMPLE)
    if a.ndim >= 2 and a.shape[0] >= k:
        return a[::k]
    flat = a.reshape(-1)
    return flat[:: math.ceil(flat.numel() / _SAMPLE)]
