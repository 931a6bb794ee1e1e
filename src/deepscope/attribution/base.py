"""The attribution pipeline: the registry, the method base class and :func:`explain`.

A method is a frozen dataclass whose fields are its parameters, registered under its key with
``@ATTRIBUTIONS.register("name")``, implementing :meth:`Attribution.compute`. :func:`explain` owns
everything around it: validation, the target, the layer choice, eval mode inside
:func:`deepscope.guard.preserved`, and the :class:`AttributionMap` with provenance. Methods get and
compute gradients only through :mod:`deepscope.attribution._autograd`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from deepscope.attribution.result import AttributionMap
from deepscope.guard import preserved
from deepscope.layers import LayerSpec, guess_spatial_layer, model_device, resolve_layers
from deepscope.registry import Registry
from deepscope.repro import library_versions
from deepscope.targets import ClassTarget, PredictedClass, Target, as_target

__all__ = ["ATTRIBUTIONS", "Attribution", "Context", "MethodOutput", "explain"]


@dataclass(frozen=True)
class Context:
    """What a method computes on: the model (eval mode, guarded), the inputs, the target and layers."""

    model: nn.Module
    inputs: Tensor  # (N, ...) on the model's device, float
    target: Target
    layers: dict[str, nn.Module]  # empty for input-space methods
    reshape: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class MethodOutput:
    """What :meth:`Attribution.compute` returns."""

    maps: Tensor  # (N, H, W) or (N, C, H, W)
    scores: Tensor  # (N,) target score at the unmodified input
    output: Tensor | None = None  # model output at the input (detached), to record the predicted class
    extras: dict[str, Any] = field(default_factory=dict)


class Attribution:
    """Base class of every method. Subclasses are frozen dataclasses: their fields are the parameters.

    Class attributes:
        needs_layer: the method explains a layer (CAM family); :func:`explain` resolves ``layer=``
            or picks the last layer with a spatial output.
        multi_layer: the method accepts several layers (fusion).
    """

    needs_layer: ClassVar[bool] = False
    multi_layer: ClassVar[bool] = False

    def compute(self, ctx: Context) -> MethodOutput:
        """Compute the maps for ``ctx``; see :class:`MethodOutput`."""
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, defaults applied (for provenance)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


ATTRIBUTIONS: Registry[type[Attribution]] = Registry("attribution method")


def build_method(method: str | Attribution, params: dict[str, Any]) -> tuple[str, Attribution]:
    """Turn a registry key and keyword parameters (or a ready instance) into ``(key, instance)``."""
    if isinstance(method, Attribution):
        if params:
            raise TypeError("pass parameters either to the method instance or to explain(), not both")
        return _key_of(method), method
    if not isinstance(method, str):
        raise TypeError(f"method must be a registry key (str) or an Attribution, got {type(method).__name__}")
    cls = ATTRIBUTIONS.get(method)
    valid = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(
            f"method {method!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(valid) or '(none)'}"
        )
    return method, cls(**params)


def _key_of(method: Attribution) -> str:
    for key in ATTRIBUTIONS.names():
        if type(method) is ATTRIBUTIONS.get(key):
            return key
    return type(method).__name__


def check_inputs(model: nn.Module, inputs: Any) -> Tensor:
    """Validate the input batch and move it to the model's device (a new tensor; the user's is untouched)."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor batch (N, ...), got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(
            f"inputs must be floating point (explanations differentiate with respect to them), got {inputs.dtype}; "
            "convert with inputs.float()"
        )
    if inputs.ndim < 2:
        raise ValueError(f"inputs must have a batch dimension, (N, ...); got shape {tuple(inputs.shape)}")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and (inputs.ndim != 4 or inputs.shape[1] != first.in_channels):
        raise ValueError(
            f"the model's first convolution expects (N, {first.in_channels}, H, W) images, got inputs of shape "
            f"{tuple(inputs.shape)}" + (" (add a batch dimension with inputs[None])" if inputs.ndim == 3 else "")
        )
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or infinite values")
    return inputs.detach().to(model_device(model))


def _describe_target(target: Target, output: Tensor | None, n: int) -> list[int] | str:
    if isinstance(target, ClassTarget):
        indices = target.indices
        return [indices] * n if isinstance(indices, int) else list(indices)
    if isinstance(target, PredictedClass) and output is not None:
        return output.flatten(1).argmax(dim=1).tolist() if output.ndim > 1 and output.shape[-1] > 1 else [0] * n
    return getattr(target, "__name__", type(target).__name__)


def explain(
    model: nn.Module,
    inputs: Tensor,
    method: str | Attribution = "gradcam",
    target: Any = None,
    layer: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    reshape: Callable[[Tensor], Tensor] | None = None,
    **params: Any,
) -> AttributionMap:
    """Explain the model's ``target`` score for each input with one attribution method.

    The model runs in eval mode; its modes, ``requires_grad`` flags, gradients and hooks are
    restored afterwards, also if the method raises. Works when the caller is under
    ``torch.no_grad()`` and when the parameters are frozen.

    Args:
        model: the network.
        inputs: a float batch ``(N, ...)``; moved to the model's device.
        method: a key of :data:`ATTRIBUTIONS` (``"gradcam"``, ``"integrated_gradients"``…) or a
            configured method instance (e.g. from :func:`deepscope.attribution.smooth`).
        target: ``None`` (the predicted class), a class index, one index per sample, or a callable
            ``output -> (N,)`` scores (see :mod:`deepscope.targets`).
        layer: for layer methods (CAM family): a dotted name or module (several for fusion);
            default: the last layer with a spatial output.
        reshape: for layer methods on non-CNN layers, maps the layer output to ``(N, C, H, W)``.
        **params: the method's parameters (e.g. ``n_steps=64`` for Integrated Gradients).

    Returns:
        An :class:`AttributionMap`.

    Example:
        >>> result = explain(model, images, "gradcam", target=281)  # doctest: +SKIP
        >>> result.maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    key, algo = build_method(method, params)
    x = check_inputs(model, inputs)
    tgt = as_target(target)
    with preserved(model, inputs):
        model.eval()
        layers: dict[str, nn.Module] = {}
        if algo.needs_layer:
            layers = resolve_layers(model, layer if layer is not None else guess_spatial_layer(model, x))
            if len(layers) > 1 and not algo.multi_layer:
                raise ValueError(f"method {key!r} explains one layer; got {len(layers)}: {', '.join(layers)}")
        elif layer is not None:
            raise ValueError(f"method {key!r} works on the input and takes no layer; drop layer={layer!r}")
        out = algo.compute(Context(model=model, inputs=x, target=tgt, layers=layers, reshape=reshape))
    return AttributionMap(
        maps=out.maps.detach().float(),
        method=key,
        layer=", ".join(layers) if layers else None,
        target=_describe_target(tgt, out.output, x.shape[0]),
        params=algo.params,
        scores=out.scores.detach().float(),
        extras=out.extras,
        versions=library_versions(),
    )
