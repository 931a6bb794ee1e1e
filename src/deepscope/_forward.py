"""Run a model only as far as the layers an analysis needs, and read their outputs.

:func:`forward_until` registers a forward hook on each wanted module (through a
:class:`~deepscope.hooks.HookSet`, so every hook is removed afterwards, also on errors) and stops
the forward pass by raising a private exception once all of them have produced an output: what
comes after them — often most of the network — is never computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from deepscope.hooks import HookSet, first_tensor

__all__ = ["forward_until"]


class _Reached(Exception):
    """Every wanted layer has run: the rest of the forward pass is skipped."""


def forward_until(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    inputs: Any,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The output (first tensor) of each module of ``modules`` when ``model(inputs)`` runs, stopping once all ran.

    A module called several times keeps its first output. ``transform`` is applied to each output
    as it is captured (e.g. a reduction, so the full map need not be kept).

    Raises:
        ValueError: a module was not called during the forward pass.
    """
    captured: dict[str, Tensor] = {}

    def make_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if name in captured or tensor is None:
                return
            captured[name] = transform(tensor) if transform is not None else tensor
            if len(captured) == len(modules):
                raise _Reached

        return hook

    with HookSet() as hooks:
        for name, module in modules.items():
            hooks.forward(module, make_hook(name))
        with contextlib.suppress(_Reached):
            model(inputs)
    missing = [name for name in modules if name not in captured]
    if missing:
        raise ValueError(f"layer(s) {', '.join(map(repr, missing))} were not called during the forward pass")
    return captured
