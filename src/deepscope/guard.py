"""``preserved(model)``: leave the user's model and tensors exactly as they were found.

Every public analysis runs inside :func:`preserved`. It snapshots the state an analysis may
touch and restores it on exit, also when the analysis raises:

- every module's ``training`` flag, ``inplace`` flag and hook dictionaries (forward, forward
  pre, backward, backward pre and their ``*_with_kwargs`` / ``*_always_called`` companions);
- every module's parameter, buffer and sub-module slots (the objects, not copies) and buffer
  values (BatchNorm running statistics, ``num_batches_tracked``);
- every parameter's ``requires_grad``, ``.grad`` and tensor hooks;
- ``torch.is_grad_enabled()``;
- for the extra ``tensors``: ``requires_grad``, ``.grad`` and tensor hooks.

It is cheap: parameters are never copied and gradients are not cloned. With ``grads=True``
each ``.grad`` is moved aside on entry (so a backward inside the block starts from ``None`` and
cannot accumulate into the user's gradients) and put back, the same tensor object with the
same values, on exit. Only buffers (usually small) are cloned and copied back.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(inplace=True)).train()
    >>> with preserved(model) as state:
    ...     _ = model.eval()
    ...     state.disable_inplace()
    1
    >>> model.training, model[2].inplace
    (True, True)
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PreservedState", "preserved"]

# Hook dictionaries of ``nn.Module``; the companions appeared over torch versions, so each is
# used only if the module has it.
_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
# Per-module slots whose *contents* (object identities) are restored in place.
_MODULE_SLOTS = ("_parameters", "_buffers", "_modules")
_TENSOR_HOOK_ATTRS = ("_backward_hooks", "_post_accumulate_grad_hooks")
_MISSING = object()


def _same_items(current: MutableMapping[Any, Any], saved: dict[Any, Any]) -> bool:
    """Whether ``current`` holds exactly ``saved``'s keys, in order, bound to the same objects."""
    return len(current) == len(saved) and all(
        k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(current.items(), saved.items(), strict=True)
    )


def _restore_mapping(current: MutableMapping[Any, Any], saved: dict[Any, Any]) -> None:
    """Put ``saved``'s items back into ``current`` in place, keeping ``current``'s identity."""
    if not _same_items(current, saved):
        current.clear()
        current.update(saved)


def _restore_keeping_new(current: MutableMapping[Any, Any], saved: dict[Any, Any]) -> None:
    """Put ``saved``'s items back into ``current``, keeping the entries added since (the model's own hooks)."""
    for key, value in saved.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value


def _copy_values(targets: list[Tensor], values: list[Tensor]) -> None:
    """Copy ``values`` into ``targets`` in place: one fused kernel per device and dtype where torch has it.

    If the fused copy fails (e.g. a buffer was resized in place), each tensor is copied on its
    own, and every failure is reported together after all the others were copied.
    """
    with torch.no_grad():
        foreach_copy = getattr(torch, "_foreach_copy_", None)
        if foreach_copy is not None and len(targets) > 1:
            try:
                foreach_copy(targets, values)
                return
            except RuntimeError:
                pass
        failures = []
        for target, value in zip(targets, values, strict=True):
            try:
                target.copy_(value)
            except RuntimeError as err:
                failures.append(err)
        if failures:
            raise RuntimeError(f"{len(failures)} buffer(s) could not be restored; first: {failures[0]}")


class _TensorState:
    """Snapshot of one tensor's autograd-facing state (no values are copied)."""

    __slots__ = ("grad", "hooks", "requires_grad", "stash_grad", "tensor")

    def __init__(self, tensor: Tensor, stash_grad: bool) -> None:
        self.tensor = tensor
        self.requires_grad = tensor.requires_grad
        self.stash_grad = stash_grad
        # Reading ``.grad`` of a non-leaf that does not retain it only warns and returns None.
        self.grad = tensor.grad if tensor.is_leaf or tensor.retains_grad else None
        # attr -> (the hook dict or None, its items)
        self.hooks: dict[str, tuple[Any, dict[Any, Any]]] = {}
        for attr in _TENSOR_HOOK_ATTRS:
            hooks = getattr(tensor, attr, _MISSING)
            if hooks is not _MISSING:
                self.hooks[attr] = (hooks, dict(hooks) if hooks is not None else {})

    def enter(self) -> None:
        if self.stash_grad and self.grad is not None:
            self.tensor.grad = None

    def restore_grad(self) -> None:
        tensor = self.tensor
        if tensor.requires_grad != self.requires_grad and tensor.is_leaf:
            tensor.requires_grad_(self.requires_grad)
        if (tensor.is_leaf or tensor.retains_grad) and tensor.grad is not self.grad:
            tensor.grad = self.grad

    def restore_hooks(self) -> None:
        for attr, (original, items) in self.hooks.items():
            current = getattr(self.tensor, attr)
            if original is None:
                if current is not None:
                    current.clear()  # torch may keep a reference to the dict: empty it first
                    setattr(self.tensor, attr, None)
                continue
            _restore_mapping(original, items)
            if current is not original:
                setattr(self.tensor, attr, original)


class PreservedState:
    """Context manager returned by :func:`preserved`; entering it takes the snapshot.

    Inside the block, :meth:`disable_inplace` switches off in-place activations (needed by
    backward hooks); everything is restored on exit.
    """

    def __init__(
        self, model: nn.Module, tensors: tuple[Tensor, ...], grads: bool, keep_model_hooks: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"preserved() expects an nn.Module, got {type(model).__name__}")
        for i, tensor in enumerate(tensors):
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"preserved() extra arguments must be tensors; argument {i + 1} is {type(tensor).__name__}"
                )
        self.model = model
        self._tensors = tensors
        self._grads = grads
        self._keep_model_hooks = keep_model_hooks
        self._entered = False

    def __enter__(self) -> PreservedState:
        if self._entered:
            raise RuntimeError("a preserved() state cannot be entered twice; call preserved(model) again")
        self._entered = True
        self._grad_enabled = torch.is_grad_enabled()
        # One pass over the modules, reading their ``__dict__`` directly: this runs on every
        # analysis call, so it avoids ``Module.__getattr__`` misses and repeated traversals.
        self._modules = list(self.model.modules())
        self._training = [m.training for m in self._modules]
        self._inplace: list[tuple[nn.Module, bool]] = []
        self._module_dicts: list[tuple[MutableMapping[Any, Any], dict[Any, Any], bool]] = []
        self._full_backward_flags: list[tuple[nn.Module, Any]] = []
        params: dict[int, Tensor] = {}
        buffers: dict[int, Tensor] = {}
        for m in self._modules:
            attrs = vars(m)
            if "inplace" in attrs or hasattr(type(m), "inplace"):
                inplace = getattr(m, "inplace", None)
                if isinstance(inplace, bool):
                    self._inplace.append((m, inplace))
            for attr in _MODULE_HOOK_DICTS + _MODULE_SLOTS:
                mapping = attrs.get(attr)
                if isinstance(mapping, dict):
                    self._module_dicts.append((mapping, dict(mapping), attr in _MODULE_HOOK_DICTS))
            self._full_backward_flags.append((m, attrs.get("_is_full_backward_hook", _MISSING)))
            params.update((id(p), p) for p in attrs.get("_parameters", {}).values() if p is not None)
            buffers.update((id(b), b) for b in attrs.get("_buffers", {}).values() if b is not None)
        # Buffer identity was captured with ``_buffers``; values need a copy (they are small).
        with torch.no_grad():
            self._buffers = (list(buffers.values()), [b.clone() for b in buffers.values()])
        self._tensor_states = [_TensorState(p, self._grads) for p in params.values()]
        self._tensor_states += [_TensorState(t, self._grads) for t in self._tensors if id(t) not in params]
        for state in self._tensor_states:
            state.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        errors = self._restore()
        if not errors:
            return
        summary = "; ".join(f"{what}: {type(err).__name__}: {err}" for what, err in errors)
        if exc is not None:  # do not mask the error that is already propagating
            warnings.warn(f"preserved() could not restore part of the model state: {summary}", stacklevel=2)
            return
        raise RuntimeError(f"preserved() could not restore part of the model state: {summary}") from errors[0][1]

    def _restore(self) -> list[tuple[str, BaseException]]:
        """Restore everything; one failing step never prevents the others. Returns the failures."""
        errors: list[tuple[str, BaseException]] = []

        def attempt(what: str, step: Callable[[], None]) -> None:
            try:
                step()
            except Exception as err:  # collected and re-raised (or warned) by __exit__
                errors.append((what, err))

        for mapping, items, hooks in self._module_dicts:
            if (mapping or items) and not _same_items(mapping, items):  # most hook dicts stay empty
                restore = _restore_keeping_new if hooks and self._keep_model_hooks else _restore_mapping
                attempt("module dict", lambda mapping=mapping, items=items, restore=restore: restore(mapping, items))
        for module, flag in self._full_backward_flags:
            if vars(module).get("_is_full_backward_hook", _MISSING) is not flag:
                attempt("backward-hook flag", lambda module=module, flag=flag: self._restore_flag(module, flag))
        # Set each module's own flag (``train(mode)`` would recurse and run overridden ``train``s).
        for module, training in zip(self._modules, self._training, strict=True):
            if module.training != training:
                attempt("training flag", lambda module=module, training=training: setattr(module, "training", training))
        for module, inplace in self._inplace:
            if getattr(module, "inplace", None) is not inplace:
                attempt("inplace flag", lambda module=module, inplace=inplace: setattr(module, "inplace", inplace))
        for state in self._tensor_states:
            attempt("tensor hooks", state.restore_hooks)
            attempt("grad / requires_grad", state.restore_grad)
        # Always copy back: BatchNorm kernels update running stats without bumping ``_version``.
        attempt("buffer values", lambda: _copy_values(*self._buffers))
        attempt("grad mode", lambda: torch.set_grad_enabled(self._grad_enabled))
        return errors

    @staticmethod
    def _restore_flag(module: nn.Module, flag: Any) -> None:
        if flag is _MISSING:
            vars(module).pop("_is_full_backward_hook", None)
        else:
            module._is_full_backward_hook = flag

    def disable_inplace(self) -> int:
        """Set ``inplace=False`` on every module whose ``inplace`` is ``True``; restored on exit.

        Full backward hooks and several attribution rules fail on activations modified in place.

        Returns:
            How many modules were switched.
        """
        if not self._entered:
            raise RuntimeError("disable_inplace() must be called inside the `with preserved(model)` block")
        switched = 0
        for module, _ in self._inplace:  # every module that had a bool ``inplace`` on entry
            if module.inplace is True:
                module.inplace = False
                switched += 1
        return switched


def preserved(model: nn.Module, *tensors: Tensor, grads: bool = True, keep_model_hooks: bool = False) -> PreservedState:
    """Snapshot the state of ``model`` (and of ``tensors``) and restore it when the block exits.

    See the module docstring for the full list of what is restored.

    Args:
        model: the user's model.
        *tensors: user tensors (typically the inputs) whose ``requires_grad``, ``.grad`` and
            tensor hooks must also be restored.
        grads: if ``True`` (default), existing ``.grad`` tensors are set aside during the block
            and put back on exit, so a backward inside cannot change them. With ``False``
            they stay visible inside the block and only the ``.grad`` *object* is restored, not
            its values: for callers that only run no-grad forwards.
        keep_model_hooks: keep the hooks the model itself registers during the block (Hugging Face
            models install their output-recording hooks on first use and remember that they did);
            deepscope's own hooks are removed by their :class:`~deepscope.hooks.HookSet` anyway.

    Returns:
        A context manager yielding a :class:`PreservedState`.
    """
    return PreservedState(model, tensors, grads, keep_model_hooks)
