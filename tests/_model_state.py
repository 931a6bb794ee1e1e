"""Shared by the state tests: a fingerprint of everything a call could change on a model.

The hook dictionaries of ``nn.Module`` are listed here independently of deepscope.guard, so a
hook the guard forgets is still caught.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


class Same:
    """Compares equal only to a ``Same`` wrapping the very same object."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Same({type(self.obj).__name__} at {id(self.obj):#x})"


def _hook_items(hooks: Any) -> Any:
    return None if hooks is None else tuple((key, Same(fn)) for key, fn in hooks.items())


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything a call could change on ``model``; tensors are cloned, objects compared by identity."""
    fp: dict[str, Any] = {"grad_enabled": torch.is_grad_enabled()}
    for name, module in model.named_modules():
        fp[f"{name}:training"] = module.training
        fp[f"{name}:_is_full_backward_hook"] = getattr(module, "_is_full_backward_hook", None)
        if isinstance(getattr(module, "inplace", None), bool):
            fp[f"{name}:inplace"] = module.inplace
        for attr in HOOK_DICTS:
            if hasattr(module, attr):
                fp[f"{name}:{attr}"] = _hook_items(getattr(module, attr))
    for name, param in model.named_parameters():
        fp[f"{name}:object"] = Same(param)
        fp[f"{name}:value"] = param.detach().clone()
        fp[f"{name}:requires_grad"] = param.requires_grad
        fp[f"{name}:grad_object"] = Same(param.grad)
        fp[f"{name}:grad_value"] = None if param.grad is None else param.grad.clone()
        fp[f"{name}:tensor_hooks"] = _hook_items(param._backward_hooks)
        fp[f"{name}:post_accumulate_hooks"] = _hook_items(param._post_accumulate_grad_hooks)
    for name, buffer in model.named_buffers():
        fp[f"{name}:object"] = Same(buffer)
        fp[f"{name}:value"] = buffer.clone()
    return fp


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys(), f"modules/parameters changed: {before.keys() ^ after.keys()}"
    changed = [key for key in before if not _same_value(before[key], after[key])]
    assert not changed, f"{len(changed)} items of the model state changed, e.g. {changed[:8]}"
