"""``HookSet``: the one place in deepscope that registers hooks, and removes every one of them.

Every forward, backward and tensor hook deepscope needs goes through a :class:`HookSet`, used as
a context manager, so no hook outlives the call that added it, also when that call raises.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    >>> with HookSet() as hooks:
    ...     outputs = hooks.capture_outputs({"0": model[0]}, transform=torch.Tensor.detach)
    ...     _ = model(torch.ones(2, 4))
    >>> outputs["0"].shape, len(model[0]._forward_hooks)
    (torch.Size([2, 3]), 0)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["TORCHSCRIPT_WAY_OUT", "HookSet", "first_tensor"]

_UNSET = object()

TORCHSCRIPT_WAY_OUT = "pass the eager model, or save it with torch.export.save (a .pt2 archive) instead of torch.jit"
"""What to do when a TorchScript model cannot run an analysis (it takes no hooks and hides its calls)."""


def first_tensor(value: Any) -> Tensor | None:
    """Return ``value`` if it is a tensor, else the first tensor found depth-first in a tuple, list or mapping."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        items: Any = value
    elif isinstance(value, Mapping):
        items = value.values()
    else:
        return None
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def _hookable(module: nn.Module) -> nn.Module:
    """Return ``module``; raise a ``TypeError`` that says what to do instead when it is a TorchScript module.

    TorchScript modules refuse forward and backward hooks, which every layer analysis needs.
    """
    if isinstance(module, torch.jit.ScriptModule):
        kind = getattr(module, "original_name", type(module).__name__)
        raise TypeError(
            f"a TorchScript module ({kind}) cannot take the hooks this analysis needs (torch.jit supports none): "
            + TORCHSCRIPT_WAY_OUT
        )
    return module


class HookSet:
    """Own a set of hook handles and remove them all at once.

    Use it as a context manager: ``__exit__`` removes every hook, also when the block raises.
    :meth:`remove` is idempotent and empties the set, so a ``HookSet`` can be reused.
    Full backward hooks also flip a module's private ``_is_full_backward_hook`` flag, which
    torch never resets; :meth:`remove` puts it back so that the user can still register
    old-style backward hooks afterwards.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        # module -> its ``_is_full_backward_hook`` value before this set first touched it.
        self._backward_flags: dict[nn.Module, Any] = {}

    def __enter__(self) -> HookSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self._handles)

    def _add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def forward(
        self,
        module: nn.Module,
        fn: Callable[..., Any],
        *,
        with_kwargs: bool = False,
        always_call: bool = False,
    ) -> RemovableHandle:
        """Register a forward hook ``fn(module, args, output)`` (``fn(module, args, kwargs, output)`` with kwargs).

        A non-``None`` return value replaces the module's output. ``always_call`` runs the hook
        even when the forward raises.
        """
        hook = _hookable(module).register_forward_hook(fn, with_kwargs=with_kwargs, always_call=always_call)
        return self._add(hook)

    def forward_pre(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> RemovableHandle:
        """Register a forward pre-hook ``fn(module, args)`` (``fn(module, args, kwargs)`` with kwargs).

        A non-``None`` return value replaces the module's inputs.
        """
        return self._add(_hookable(module).register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def full_backward(self, module: nn.Module, fn: Callable[..., Any]) -> RemovableHandle:
        """Register a full backward hook ``fn(module, grad_input, grad_output)``.

        A non-``None`` return value replaces ``grad_input``.
        """
        self._backward_flags.setdefault(_hookable(module), getattr(module, "_is_full_backward_hook", _UNSET))
        return self._add(module.register_full_backward_hook(fn))

    def full_backward_pre(self, module: nn.Module, fn: Callable[..., Any]) -> RemovableHandle:
        """Register a full backward pre-hook ``fn(module, grad_output)``.

        A non-``None`` return value replaces ``grad_output``.
        """
        return self._add(_hookable(module).register_full_backward_pre_hook(fn))

    def tensor(self, tensor: Tensor, fn: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Register a gradient hook ``fn(grad)`` on ``tensor`` (which must require grad).

        A non-``None`` return value replaces the gradient.
        """
        if not tensor.requires_grad:
            raise ValueError("cannot hook a tensor that does not require grad; call `.requires_grad_()` on it first")
        return self._add(tensor.register_hook(fn))

    def capture_outputs(
        self,
        modules: Mapping[str, nn.Module],
        *,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Record each module's output into the returned dict, keyed like ``modules``.

        The stored value is the output itself or, for tuple, list or dict outputs, the first
        tensor found in it (outputs holding no tensor are not stored). ``transform`` is applied
        before storing, e.g. ``torch.Tensor.detach`` or a slice of the batch. Each call of a
        module overwrites its entry, so a module run several times keeps its last output.

        Args:
            modules: ``{name: module}``, e.g. from :func:`deepscope.layers.resolve_layers`.
            transform: optional function applied to each captured tensor.

        Returns:
            The dict the hooks fill; it is empty until the model runs.
        """
        captured: dict[str, Tensor] = {}

        def make_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                tensor = first_tensor(output)
                if tensor is not None:
                    captured[name] = transform(tensor) if transform is not None else tensor

            return hook

        for name, module in modules.items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"capture_outputs expects nn.Module values; {name!r} is {type(module).__name__}")
            self.forward(module, make_hook(name))
        return captured

    def remove(self) -> None:
        """Remove every hook of the set; safe to call any number of times."""
        handles, self._handles = self._handles, []
        flags, self._backward_flags = self._backward_flags, {}
        for handle in reversed(handles):
            handle.remove()
        for module, flag in flags.items():
            # Only reset the flag when no full backward hook (ours or another's) is left.
            if flag is not _UNSET and not module._backward_hooks:
                module._is_full_backward_hook = flag
