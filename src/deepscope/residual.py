"""How much each residual block adds to its input: the ratio ‖F(x)‖ / ‖skip(x)‖ during training.

A residual block computes ``y = act(F(x) + skip(x))``. When ‖F(x)‖ / ‖skip(x)‖ stays far below 1
the block barely changes its input (the network behaves as if it were shallower); far above 1 the
skip path no longer dominates and the block behaves like a plain layer. Two kinds of blocks:

- torchvision's ``BasicBlock`` and ``Bottleneck`` (and blocks built the same way: ``bn2`` or
  ``bn3`` as the last layer of the branch, an optional ``downsample`` on the skip path) are found
  automatically; the branch is the output of that last normalisation, the skip is the
  ``downsample`` output or the block input;
- any module declared by name whose output is ``x + F(x)`` with nothing after the sum (a
  transformer's attention or MLP sub-block with its residual add): ``F(x) = y − x``.

Norms are L2 norms over the whole batch, computed on the device inside the hooks of the measured
training steps (the ``residual_flow`` probe, on the schedule of the layer health).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepscope._probe import Probe, register
from deepscope._store_writer import RunWriter
from deepscope._tags import TAGS
from deepscope.hooks import HookSet, first_tensor
from deepscope.layers import model_device, resolve_layers

__all__ = ["ResidualFlow", "find_residual_blocks"]


def _branch_end(block: nn.Module) -> nn.Module | None:
    """The last layer of a torchvision-style block's branch, or ``None`` for other modules."""
    if not hasattr(block, "downsample"):
        return None
    for name in ("bn3", "bn2"):
        end = getattr(block, name, None)
        if isinstance(end, nn.Module):
            return end
    return None


def find_residual_blocks(model: nn.Module) -> list[str]:
    """Names of the torchvision-style residual blocks of ``model`` (``BasicBlock``, ``Bottleneck``)."""
    return [name for name, module in model.named_modules() if name and _branch_end(module) is not None]


@register("residual_flow")
class ResidualFlow(Probe):
    """‖F(x)‖ / ‖skip(x)‖ of residual blocks on the measured training steps (see the module docstring).

    Tags: ``health/residual`` (``(blocks,)`` per measured step, NaN for a block that did not run);
    meta ``health/residual_blocks``.

    Args:
        model: the model.
        blocks: ``True`` for the torchvision-style blocks found automatically, or names/modules
            of blocks (torchvision-style, or modules whose output is ``x + F(x)``).
    """

    schedule = "measured"
    tags = (TAGS.RESIDUAL, TAGS.RESIDUAL_BLOCKS)

    def __init__(self, model: nn.Module, blocks: bool | Sequence[str | nn.Module]) -> None:
        if blocks is True:
            names = find_residual_blocks(model)
        elif blocks is False:
            names = []
        else:
            names = list(resolve_layers(model, list(blocks)))
        self.model = model
        self.blocks = names
        self._modules = [model.get_submodule(name) for name in names]
        self._norms: dict[int, list[Tensor]] = {}

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        run.set_meta(TAGS.RESIDUAL_BLOCKS, self.blocks)

    def arm(self, hooks: HookSet) -> None:
        self._norms = {}
        for index, block in enumerate(self._modules):
            end = _branch_end(block)
            if end is None:
                self._register_sum(hooks, index, block)
            else:
                self._register_torchvision(hooks, index, block, end)

    def measure(self) -> Mapping[str, Tensor]:
        device = model_device(self.model)
        ratios = [
            (norms[0] / norms[1]).float() if len(norms) == 2 else torch.full((), float("nan"), device=device)
            for norms in (self._norms.get(i, []) for i in range(len(self._modules)))
        ]
        self._norms = {}
        return {TAGS.RESIDUAL: torch.stack([r.to(device) for r in ratios]) if ratios else torch.empty(0, device=device)}

    def nonfinite(self, arrays: Mapping[str, np.ndarray]) -> bool:
        return bool(np.isinf(arrays[TAGS.RESIDUAL]).any())  # NaN: a block that did not run

    def _keep(self, index: int, slot: int, value: Tensor) -> None:
        norms = self._norms.setdefault(index, [torch.empty(0), torch.empty(0)])
        if norms[slot].numel() == 0:  # a block called twice per step: keep its first call
            norms[slot] = value

    def _register_torchvision(self, hooks: HookSet, index: int, block: nn.Module, end: nn.Module) -> None:
        def branch(_module: nn.Module, _args: Any, output: Any) -> None:
            self._keep(index, 0, _norm(output))

        hooks.forward(end, branch)
        downsample = getattr(block, "downsample", None)
        if isinstance(downsample, nn.Module):
            hooks.forward(downsample, lambda _m, _a, output: self._keep(index, 1, _norm(output)))
        else:
            hooks.forward_pre(block, lambda _m, args: self._keep(index, 1, _norm(args)))

    def _register_sum(self, hooks: HookSet, index: int, block: nn.Module) -> None:
        inputs: list[Tensor] = []

        def before(_module: nn.Module, args: Any) -> None:
            tensor = first_tensor(args)
            if tensor is not None:
                inputs.append(tensor.detach())

        def after(_module: nn.Module, _args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None or not inputs:
                return
            x = inputs.pop()
            if tensor.shape != x.shape:
                raise ValueError(
                    f"residual block {self.blocks[index]!r} maps {tuple(x.shape)} to {tuple(tensor.shape)}; a declared "
                    "block must return x + F(x) with the shape of x (declare the sub-module that does the sum)"
                )
            self._keep(index, 0, torch.linalg.vector_norm((tensor.detach() - x).float()))
            self._keep(index, 1, torch.linalg.vector_norm(x.float()))

        hooks.forward_pre(block, before)
        hooks.forward(block, after)


def _norm(value: Any) -> Tensor:
    tensor = first_tensor(value)
    if tensor is None:
        raise TypeError(f"a residual path returned {type(value).__name__}, which holds no tensor")
    return torch.linalg.vector_norm(tensor.detach().float())
