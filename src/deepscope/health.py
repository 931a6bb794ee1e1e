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
  bounded activation — sigmoid, tanh, hardtanh, ReLU6 —, NaN for unbounded ones);
- on the module's own parameters: ``grad_norm`` (L2 norm of their gradients), ``weight_norm``
  and ``update_ratio`` (‖w_after − w_before‖ / ‖w_before‖ over the step: ≈ 1e-3 is the classic
  healthy order of magnitude; far below means a frozen layer, far above an unstable one).

Non-finite values are kept as they are (NaN, inf) so a diverging run shows where it broke.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.hooks import HookSet, first_tensor
from deepscope.layers import model_device, resolve_layers

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
    """``True`` (defaults), names or modules, or a regular expression ``"re:conv.*"`` on layer names."""
    if spec is True:
        return default_health_layers(model)
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


class LayerHealth:
    """Arm, measure and read per-layer statistics for one step out of ``every`` (see the module docstring).

    Args:
        model: the model being trained.
        layers: dotted names of the watched modules.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = list(layers)
        self.modules = [model.get_submodule(name) for name in self.layers]
        self._params = [list(m.parameters(recurse=False)) for m in self.modules]
        self._bounds = [_bounds_of(m) for m in self.modules]
        self.activation_layers = [
            n for n, m in zip(self.layers, self.modules, strict=True) if isinstance(m, ACTIVATIONS)
        ]
        self._hooks: HookSet | None = None
        self._activations: dict[int, Tensor] = {}
        self._before: list[list[Tensor]] | None = None

    @property
    def armed(self) -> bool:
        """Whether the next training step is being measured."""
        return self._hooks is not None

    def arm(self) -> None:
        """Register the forward hooks and copy the weights: the next training step is measured."""
        if self._hooks is not None:
            return
        self._activations = {}
        with torch.no_grad():
            self._before = [[p.detach().clone() for p in params] for params in self._params]
        hooks = HookSet()
        for index, module in enumerate(self.modules):
            hooks.forward(module, self._make_hook(index))
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
            columns = [
                torch.cat(
                    [
                        self._activations.get(j, _nan(len(ACTIVATION_STATISTICS))).to(device),
                        _parameter_statistics(params, self._before[j] if self._before else None).to(device),
                    ]
                )
                for j, params in enumerate(self._params)
            ]
            values = torch.stack(columns, dim=1).float().cpu() if columns else torch.empty(len(STATISTICS), 0)
        nonfinite = bool((~torch.isfinite(values) & self._measured()).any())
        self._activations, self._before = {}, None
        return HealthTable(step=step, values=values, nonfinite=nonfinite)  # one device-to-host transfer

    def _measured(self) -> Tensor:
        """``(statistics, layers)`` mask of the values that were measured (the others are NaN by design)."""
        mask = torch.zeros(len(STATISTICS), len(self.layers), dtype=torch.bool)
        for j, params in enumerate(self._params):
            if j in self._activations:
                mask[: len(ACTIVATION_STATISTICS) - 1, j] = True
                mask[len(ACTIVATION_STATISTICS) - 1, j] = self._bounds[j] is not None
            if params:
                offset = len(ACTIVATION_STATISTICS)
                mask[offset, j] = any(p.grad is not None for p in params)
                mask[offset + 1, j] = True
                mask[offset + 2, j] = self._before is not None
        return mask

    def _make_hook(self, index: int) -> Any:
        bounds = self._bounds[index]

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if index in self._activations:  # a module called twice per step: keep the first call
                return
            tensor = first_tensor(output)
            if tensor is not None and tensor.is_floating_point():
                self._activations[index] = _activation_statistics(tensor.detach(), bounds)

        return hook


def _bounds_of(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return float(module.min_val), float(module.max_val)
    return next((b for kind, b in _BOUNDS.items() if isinstance(module, kind)), None)


def _activation_statistics(a: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """``(5,)`` mean, std, share of zeros, share of dead channels, saturation of one output, on its device."""
    a = a.float()
    zero = a == 0
    # dead units: channels (dim 1) that are zero for every sample and position of the batch
    dead = zero.transpose(0, 1).flatten(1).all(dim=1).float().mean() if a.ndim >= 2 else zero.float().mean()
    if bounds is None:
        saturation = torch.full((), float("nan"), device=a.device)
    else:
        low, high = bounds
        margin = _SATURATION_MARGIN * (high - low)
        saturation = ((a <= low + margin) | (a >= high - margin)).float().mean()
    std = a.std() if a.numel() > 1 else torch.zeros((), device=a.device)
    return torch.stack([a.mean(), std, zero.float().mean(), dead, saturation])


def _nan(n: int) -> Tensor:
    return torch.full((n,), float("nan"))


def _parameter_statistics(params: Sequence[Tensor], before: Sequence[Tensor] | None) -> Tensor:
    """``(3,)`` gradient norm, weight norm and update ratio of a module's own parameters (NaN without any)."""
    if not params:
        return _nan(len(PARAMETER_STATISTICS))
    device = params[0].device
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = _norm(grads) if grads else torch.full((), float("nan"), device=device)
    weight_norm = _norm(params)
    if before is None:
        ratio = torch.full((), float("nan"), device=device)
    else:
        old = _norm(before)
        ratio = _norm([p.detach() - b for p, b in zip(params, before, strict=True)]) / old
    return torch.stack([grad_norm.to(device), weight_norm, ratio])


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of several tensors taken together."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors]))
