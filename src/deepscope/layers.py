"""Find and describe a model's layers by their dotted ``named_modules()`` path.

Layers are named exactly as ``model.named_modules()`` names them (``"layer4.1.conv2"``) or
passed as module objects; an unknown name raises :class:`~deepscope.errors.LayerNotFoundError`
with the closest valid names.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> resolve_layer(model, "2")
    ('2', Linear(in_features=8, out_features=2, bias=True))
    >>> [(info.name, info.output_shape) for info in list_layers(model, torch.zeros(3, 4))]
    [('0', (3, 8)), ('1', (3, 8)), ('2', (3, 2))]
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.errors import LayerNotFoundError
from deepscope.guard import preserved
from deepscope.hooks import TORCHSCRIPT_WAY_OUT, HookSet, first_tensor

__all__ = [
    "ACTIVATIONS",
    "LayerInfo",
    "LayerSpec",
    "activation_bounds",
    "guess_spatial_layer",
    "is_layer",
    "layer_names",
    "list_layers",
    "model_device",
    "resolve_layer",
    "resolve_layers",
]

LayerSpec = str | nn.Module
"""A layer given by its dotted ``named_modules()`` path or as the module object."""

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


def activation_bounds(module: nn.Module) -> tuple[float, float] | None:
    """The output range of a bounded activation module (sigmoid, tanh, hardtanh, ReLU6…), else None."""
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return float(module.min_val), float(module.max_val)
    return next((b for kind, b in _BOUNDS.items() if isinstance(module, kind)), None)


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module, in ``named_modules()`` order, without the root ``""``."""
    _check_model(model)
    return [name for name, _ in model.named_modules() if name]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter, else its first buffer, else CPU."""
    _check_model(model)
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _resolve(model: nn.Module, layer: Any, by_name: Mapping[str, nn.Module]) -> tuple[str, nn.Module]:
    """Resolve one layer given ``by_name`` (all sub-module paths, aliases of shared modules included)."""
    if isinstance(layer, str):
        module = by_name.get(layer) if layer else None
        if module is None:
            raise LayerNotFoundError(layer, layer_names(model))
        return layer, module
    if isinstance(layer, nn.Module):
        if layer is model:
            raise ValueError("the model itself is not one of its layers; pass a sub-module or its dotted name")
        for name, module in by_name.items():
            if module is layer:
                return name, module
        raise ValueError(
            f"the {type(layer).__name__} module passed as layer is not inside the model; "
            "pass one of the model's own sub-modules (not a copy) or its dotted name"
        )
    raise TypeError(
        f"a layer must be a dotted name (str) or an nn.Module of the model, got {type(layer).__name__}; "
        "see deepscope.layer_names(model) for valid names"
    )


def _module_map(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules(remove_duplicate=False) if name}


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` for a dotted layer name or a sub-module of ``model``.

    Args:
        model: the model to look in.
        layer: a dotted ``named_modules()`` path such as ``"layer4.1.conv2"``, or the module itself.

    Returns:
        The layer's dotted name and module.

    Raises:
        LayerNotFoundError: the name matches no sub-module (the message lists the closest names).
        ValueError: the module is not inside ``model`` (or is ``model`` itself).
        TypeError: ``layer`` is neither a string nor a module.
    """
    _check_model(model)
    return _resolve(model, layer, _module_map(model))


def resolve_layers(model: nn.Module, layers: LayerSpec | Sequence[LayerSpec]) -> dict[str, nn.Module]:
    """Resolve one or several layers to ``{name: module}``, keeping order and dropping duplicates.

    Args:
        model: the model to look in.
        layers: a name or module, or a sequence of them (see :func:`resolve_layer`).

    Returns:
        ``{dotted name: module}`` in the order given.
    """
    _check_model(model)
    items: Sequence[Any] = [layers] if isinstance(layers, (str, nn.Module)) else layers
    if not isinstance(items, Sequence):
        raise TypeError(
            f"layers must be a name, a module or a sequence of them, got {type(layers).__name__}",
        )
    if not items:
        raise ValueError("no layers given; pass at least one dotted name or module")
    by_name = _module_map(model)
    resolved: dict[str, nn.Module] = {}
    for layer in items:
        name, module = _resolve(model, layer, by_name)
        resolved.setdefault(name, module)
    return resolved


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One row of :func:`list_layers`.

    Attributes:
        name: dotted ``named_modules()`` path.
        type: class name of the module (for TorchScript modules, of the scripted class).
        depth: nesting depth; direct children of the model have depth 1.
        params: parameters owned by this module itself (not its children).
        params_total: parameters of the module and all its descendants.
        trainable: how many of ``params_total`` require grad.
        output_shape: shape of the (first tensor of the) output on the first call during the
            dry run; ``None`` without an example input or if the module was not called.
        is_leaf: whether the module has no children.
    """

    name: str
    type: str
    depth: int
    params: int
    params_total: int
    trainable: int
    output_shape: tuple[int, ...] | None
    is_leaf: bool


def _exported_from(module: nn.Module) -> str | None:
    """The qualified class a ``torch.export.unflatten`` sub-module was exported from (None for other modules)."""
    if type(module).__module__ != "torch.export.unflatten":
        return None
    type_name = getattr(module, "type_name", None)  # torch >= 2.5
    qualified = type_name() if callable(type_name) else None
    return qualified if isinstance(qualified, str) else None


def is_layer(module: nn.Module, kinds: type[nn.Module] | tuple[type[nn.Module], ...]) -> bool:
    """``isinstance(module, kinds)``, also for a module that ``torch.export.unflatten`` rebuilt from one of ``kinds``.

    Unflattened modules run the exported graph and lose their class; the class they came from is
    compared by its qualified name, so subclasses of ``kinds`` are not recognised there.
    """
    if isinstance(module, kinds):
        return True
    exported = _exported_from(module)
    return exported is not None and any(
        exported == f"{kind.__module__}.{kind.__qualname__}"
        for kind in (kinds if isinstance(kinds, tuple) else (kinds,))
    )


def _type_name(module: nn.Module) -> str:
    """The module's class name; for TorchScript and unflattened exported modules, the class they came from."""
    if isinstance(module, torch.jit.ScriptModule):
        name = getattr(module, "original_name", None)
        if isinstance(name, str):
            return name
    exported = _exported_from(module)
    return exported.rsplit(".", 1)[-1] if exported else type(module).__name__


def _to_device(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


def _split_input(example_input: Any, device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Turn ``example_input`` into ``(args, kwargs)`` on ``device``."""
    if isinstance(example_input, Tensor):
        return (example_input.to(device),), {}
    if isinstance(example_input, tuple):
        return tuple(_to_device(v, device) for v in example_input), {}
    if isinstance(example_input, Mapping):
        if not all(isinstance(k, str) for k in example_input):
            raise TypeError("a dict example_input is passed as keyword arguments, so its keys must be strings")
        return (), {k: _to_device(v, device) for k, v in example_input.items()}
    raise TypeError(
        "example_input must be a Tensor, a tuple of positional inputs or a dict of keyword inputs, "
        f"got {type(example_input).__name__}"
    )


def _output_shapes(
    model: nn.Module, modules: Mapping[str, nn.Module], example_input: Any
) -> dict[str, tuple[int, ...] | None]:
    """Run one no-grad, eval-mode forward and return each module's first output shape."""
    args, kwargs = _split_input(example_input, model_device(model))
    shapes: dict[str, tuple[int, ...] | None] = {}
    # TorchScript modules cannot take hooks: they keep ``output_shape=None``.
    hookable = {name: m for name, m in modules.items() if not isinstance(m, torch.jit.ScriptModule)}
    if len(hookable) < len(modules):
        warnings.warn(
            f"{len(modules) - len(hookable)} TorchScript module(s) cannot be hooked: their output_shape is None; "
            "pass the eager (not scripted) model to see every shape",
            stacklevel=3,
        )
    if not hookable:
        return shapes

    def make_hook(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if name not in shapes:
                tensor = first_tensor(output)
                shapes[name] = tuple(tensor.shape) if tensor is not None else None

        return hook

    with preserved(model, grads=False), HookSet() as hooks, torch.no_grad():
        model.eval()
        for name, module in hookable.items():
            hooks.forward(module, make_hook(name))
        model(*args, **kwargs)
    return shapes


def list_layers(model: nn.Module, example_input: Any = None, *, leaves_only: bool = False) -> list[LayerInfo]:
    """Describe every sub-module: type, depth, parameter counts and, given an input, output shape.

    With ``example_input`` the model runs once in eval mode under ``torch.no_grad()``; the model
    is left exactly as it was (see :func:`deepscope.guard.preserved`), also if that run raises.

    Args:
        model: the model to describe.
        example_input: optional input for the dry run: a Tensor, a tuple of positional inputs or
            a dict of keyword inputs; tensors are moved to the model's device.
        leaves_only: list only modules without children.

    Returns:
        One :class:`LayerInfo` per sub-module in ``named_modules()`` order (root excluded).
    """
    _check_model(model)
    modules = {name: m for name, m in model.named_modules() if name}
    if leaves_only:
        modules = {name: m for name, m in modules.items() if next(m.children(), None) is None}
    shapes = _output_shapes(model, modules, example_input) if example_input is not None else {}
    infos = []
    for name, module in modules.items():
        params = list(module.parameters())
        infos.append(
            LayerInfo(
                name=name,
                type=_type_name(module),
                depth=name.count(".") + 1,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                params_total=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
                output_shape=shapes.get(name),
                is_leaf=next(module.children(), None) is None,
            )
        )
    return infos


def guess_spatial_layer(model: nn.Module, example_input: Any) -> str:
    """The last layer (in execution order) whose output is a spatial map ``(N, C, H, W)``.

    The default layer of the CAM family: the end of the convolutional trunk (``layer4`` of a
    ResNet, ``features`` of a VGG). Layers with a larger-than-1×1 map are preferred; one no-grad
    forward pass in eval mode finds them, and the model is left unchanged. The answer is
    remembered for the model's current modules and the input's shape, so repeated calls with
    same-sized inputs cost no extra forward pass.

    Raises:
        ValueError: no layer produces a 4-D output; pass ``layer=`` (and ``reshape=`` for tokens).
    """
    _check_model(model)
    key = (_input_signature(example_input), tuple(map(id, model.modules())))
    known = _GUESSES.setdefault(model, {})
    if key not in known:
        known.clear()  # one entry per model: a changed model or input size replaces it
        known[key] = _find_spatial_layer(model, example_input)
    return known[key]


_GUESSES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def _input_signature(example_input: Any) -> Any:
    """What of an example input decides the layer shapes: tensor shapes (batch size aside) and dtypes."""
    if isinstance(example_input, Tensor):
        return (tuple(example_input.shape[1:]), example_input.dtype)
    if isinstance(example_input, (tuple, list)):
        return tuple(_input_signature(x) for x in example_input)
    if isinstance(example_input, Mapping):
        return tuple(sorted((k, _input_signature(v)) for k, v in example_input.items()))
    return repr(example_input)


def _find_spatial_layer(model: nn.Module, example_input: Any) -> str:
    args, kwargs = _split_input(example_input, model_device(model))
    seen: list[tuple[str, tuple[int, ...]]] = []

    def make_hook(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is not None and tensor.ndim == 4:
                seen.append((name, tuple(tensor.shape)))

        return hook

    with preserved(model, grads=False), HookSet() as hooks, torch.no_grad():
        model.eval()
        for name, module in model.named_modules():
            if name and not isinstance(module, torch.jit.ScriptModule):
                hooks.forward(module, make_hook(name))
        model(*args, **kwargs)
    if not seen and isinstance(model, torch.jit.ScriptModule):  # its modules take no hooks: none was seen
        raise ValueError(
            f"the spatial layers of a TorchScript model cannot be found (it takes no hooks): {TORCHSCRIPT_WAY_OUT}"
        )
    if not seen:
        raise ValueError(
            "no layer of the model outputs a spatial map (N, C, H, W); pass layer= explicitly, with reshape= "
            "for token outputs such as a ViT's (N, 1 + H*W, C)"
        )
    pooling = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # a resize before the head, not a feature map
    seen = [(name, shape) for name, shape in seen if not is_layer(model.get_submodule(name), pooling)] or seen
    spatial = [name for name, shape in seen if shape[2] * shape[3] > 1]
    return (spatial or [name for name, _ in seen])[-1]
