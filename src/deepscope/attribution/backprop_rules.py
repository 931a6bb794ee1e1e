"""Backward rules on ReLU: DeconvNet and Guided Backprop as plain input gradients under a rule.

A backward rule changes what a ReLU ``a = max(z, 0)`` sends back when it receives the relevance
(gradient) ``R`` from above; the forward pass is unchanged:

=============  ===========================  ==============================================
rule           backward                     reference
=============  ===========================  ==============================================
``gradient``   ``1[z > 0] · R``             the true gradient
``deconvnet``  ``1[R > 0] · R``             Zeiler & Fergus 2014 (DeconvNet)
``guided``     ``1[z > 0] · 1[R > 0] · R``  Springenberg et al. 2015 (Guided Backprop)
``redirected`` ``1[z > 0 or R < 0] · R``    Lucid's redirected ReLU (feature visualisation)
=============  ===========================  ==============================================

Every other operation keeps its normal backward; in particular max-pooling routes the signal to
the argmax of each window, which are exactly DeconvNet's "switches".

:func:`relu_rules` applies a rule during a forward + backward without touching the model: a
scoped :class:`torch.overrides.TorchFunctionMode` maps every ReLU *call* to the rule's
:class:`torch.autograd.Function`. It sees ``F.relu`` (which every ``nn.ReLU`` module calls,
in-place or not), ``torch.relu``, ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_`` and the
clamps that are ReLUs (``clamp``/``clip`` with ``min=0`` and no ``max``, ``clamp_min(0)``, and
their in-place forms), so models written with functional ReLUs are covered too, and the aten
operators they become in a ``torch.export`` graph (``aten.relu.default``…), so the modules
``torch.export.unflatten`` rebuilds get the same rule. Activations that
are not ReLUs (``hardswish``, ``relu6``, ``leaky_relu``, GELU…) keep their true gradient.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> with relu_rules("guided"):
    ...     (grads,) = torch.autograd.grad(model(x).sum(), x)
    >>> grads.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.overrides import TorchFunctionMode

from deepscope.attribution._autograd import input_grads
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, Context, MethodOutput
from deepscope.hooks import TORCHSCRIPT_WAY_OUT

__all__ = ["RULES", "DeconvNet", "GuidedBackprop", "RuleName", "check_rules_reach", "relu_rules"]

RuleName = Literal["gradient", "deconvnet", "guided", "redirected"]


# --------------------------------------------------------------------------- the rules


# Backward passes call aten operator packets directly (``_aten.relu``): one fused kernel each, and
# never mistaken for a model ReLU by the mode below, also when the backward runs inside the block
# with ``create_graph=True``: the mode matches the Python-level functions and the ``.default``
# overloads that a ``torch.export`` graph calls, never a packet.
_aten = torch.ops.aten


def _relu_forward(ctx: FunctionCtx, z: Tensor, inplace: bool, save_output: bool) -> Tensor:
    """The ReLU forward every rule shares (identical values to ``torch.relu``), in place if asked."""
    if inplace:
        out = torch.relu_(z)
        ctx.mark_dirty(out)
    else:
        out = torch.relu(z)
    if save_output:
        ctx.save_for_backward(out)  # out > 0 exactly where z > 0
    return out


class _OutputSavingReLU(torch.autograd.Function):
    """The forward of the rules whose backward needs to know where ``z > 0`` (they save the output)."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, inplace: bool) -> Tensor:
        return _relu_forward(ctx, z, inplace, save_output=True)


class _GradientReLU(_OutputSavingReLU):
    """The true ReLU gradient ``1[z > 0] · R`` (a reference point for the other rules)."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return _aten.threshold_backward(grad, out, 0), None  # torch's own ReLU backward


class _DeconvNetReLU(torch.autograd.Function):
    """DeconvNet (Zeiler & Fergus 2014): rectify the signal going down, ``1[R > 0] · R``; ignores ``z``."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, inplace: bool) -> Tensor:
        return _relu_forward(ctx, z, inplace, save_output=False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _aten.relu(grad), None


class _GuidedReLU(_OutputSavingReLU):
    """Guided Backprop (Springenberg et al. 2015): both masks, ``1[z > 0] · 1[R > 0] · R``."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return _aten.relu_(_aten.threshold_backward(grad, out, 0)), None


class _RedirectedReLU(_OutputSavingReLU):
    """Lucid's redirected ReLU: also ``R`` where ``z <= 0`` if descending ``R`` would raise ``z`` (``R < 0``).

    Feature visualisation descends ``-objective``: a unit whose ReLU is off everywhere gets no true
    gradient; letting the gradient through where it pushes the input up wakes it.
    """

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return torch.where((out > 0) | (grad < 0), grad, 0), None


RULES: dict[str, type[torch.autograd.Function]] = {
    "gradient": _GradientReLU,
    "deconvnet": _DeconvNetReLU,
    "guided": _GuidedReLU,
    "redirected": _RedirectedReLU,
}
"""Rule name -> the ``autograd.Function`` computing ``ReLU`` with that backward."""


# --------------------------------------------------------------------------- which calls are ReLUs

# Each matcher returns (input, inplace) when the call is a ReLU of a tensor, else None.
_Matcher = Callable[[tuple[Any, ...], dict[str, Any]], "tuple[Tensor, bool] | None"]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _is_zero(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0


def _relu_match(inplace: bool) -> _Matcher:
    def match(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, bool] | None:
        return _arg(args, kwargs, 0, "input"), inplace

    return match


def _functional_relu_match(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, bool] | None:
    return _arg(args, kwargs, 0, "input"), bool(_arg(args, kwargs, 1, "inplace", False))


def _clamp_match(inplace: bool) -> _Matcher:
    """``clamp(x, min=0)`` / ``clip(x, 0)`` with no ``max`` is a ReLU."""

    def match(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, bool] | None:
        if _is_zero(_arg(args, kwargs, 1, "min")) and _arg(args, kwargs, 2, "max") is None:
            return _arg(args, kwargs, 0, "input"), inplace
        return None

    return match


def _clamp_min_match(inplace: bool) -> _Matcher:
    def match(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, bool] | None:
        if _is_zero(_arg(args, kwargs, 1, "min")):
            return _arg(args, kwargs, 0, "input"), inplace
        return None

    return match


_RELU_CALLS: dict[Callable[..., Any], _Matcher] = {
    F.relu: _functional_relu_match,  # nn.ReLU(inplace=...) calls this
    torch.relu: _relu_match(False),
    torch.relu_: _relu_match(True),  # also F.relu_
    Tensor.relu: _relu_match(False),
    Tensor.relu_: _relu_match(True),
    torch.clamp: _clamp_match(False),
    torch.clip: _clamp_match(False),
    Tensor.clamp: _clamp_match(False),
    Tensor.clip: _clamp_match(False),
    torch.clamp_: _clamp_match(True),
    torch.clip_: _clamp_match(True),
    Tensor.clamp_: _clamp_match(True),
    Tensor.clip_: _clamp_match(True),
    torch.clamp_min: _clamp_min_match(False),
    Tensor.clamp_min: _clamp_min_match(False),
    torch.clamp_min_: _clamp_min_match(True),
    Tensor.clamp_min_: _clamp_min_match(True),
    # What nn.ReLU and the clamps above become in a torch.export graph (torch.export.unflatten modules).
    _aten.relu.default: _relu_match(False),
    _aten.relu_.default: _relu_match(True),
    _aten.clamp.default: _clamp_match(False),
    _aten.clamp_.default: _clamp_match(True),
    _aten.clip.default: _clamp_match(False),
    _aten.clip_.default: _clamp_match(True),
    _aten.clamp_min.default: _clamp_min_match(False),
    _aten.clamp_min_.default: _clamp_min_match(True),
}


class _ReLURuleMode(TorchFunctionMode):
    """Routes every differentiable ReLU call to ``rule``; every other call runs unchanged."""

    def __init__(self, rule: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.rule = rule

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        matcher = _RELU_CALLS.get(func)
        if matcher is not None and torch.is_grad_enabled():
            found = matcher(args, kwargs)
            if found is not None:
                z, inplace = found
                if isinstance(z, Tensor) and z.requires_grad and z.is_floating_point():
                    return self.rule.apply(z, inplace)
        return func(*args, **kwargs)


@contextmanager
def relu_rules(rule: RuleName, model: nn.Module | None = None) -> Iterator[None]:
    """Apply a ReLU backward rule to every forward + backward run inside the block.

    The model is not modified (no hook, no module swap, no flag): the rule is attached to the
    ReLU calls themselves by a :class:`~torch.overrides.TorchFunctionMode` that is active only
    inside the block and only on this thread. Run the forward pass inside the block; the backward
    pass may run inside or after it.

    Args:
        rule: ``"gradient"`` (the true gradient), ``"deconvnet"``, ``"guided"`` or ``"redirected"``.
        model: the model the block runs, checked first: the rule cannot reach the ReLUs that
            TorchScript modules run in their own interpreter, which would silently keep their
            true gradient.

    Raises:
        ValueError: unknown rule.
        TypeError: ``model`` holds a TorchScript module.
    """
    if rule not in RULES:
        raise ValueError(f"unknown ReLU rule {rule!r}; valid: {', '.join(map(repr, RULES))}")
    if model is not None:
        check_rules_reach(model, rule)
    with _ReLURuleMode(RULES[rule]):
        yield


def check_rules_reach(model: nn.Module, rule: RuleName) -> None:
    """Raise ``TypeError`` when ``model`` holds a TorchScript module, whose ReLUs no rule can reach.

    TorchScript runs them in its own interpreter, where they would silently keep their true gradient.
    Callers that enter :func:`relu_rules` many times on one model check it once with this.
    """
    scripted = [name for name, module in model.named_modules() if isinstance(module, torch.jit.ScriptModule)]
    if scripted:
        raise TypeError(
            f"the {rule!r} ReLU rule cannot reach the ReLUs of TorchScript module {scripted[0] or '(the model)'!r}, "
            f"which run in TorchScript's interpreter: {TORCHSCRIPT_WAY_OUT}"
        )


# --------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class _RuleGradient(Attribution):
    """Plain input gradients computed under a ReLU backward rule (``rule`` is set by each subclass)."""

    rule: ClassVar[RuleName]

    def compute(self, ctx: Context) -> MethodOutput:
        with relu_rules(self.rule, ctx.model):
            result = input_grads(ctx.model, ctx.inputs, ctx.target)
        return MethodOutput(maps=result.grads, scores=result.scores, output=result.output)


@ATTRIBUTIONS.register("guided_backprop")
@dataclass(frozen=True)
class GuidedBackprop(_RuleGradient):
    """Guided Backprop (Springenberg, Dosovitskiy, Brox & Riedmiller 2015, "Striving for Simplicity").

    The input gradient of the target score where every ReLU ``a = max(z, 0)`` passes back only
    positive signal at positions where it was active: ``R_z = 1[z > 0] · 1[R_a > 0] · R_a``. All
    other layers (convolutions, max-pool switches, BatchNorm, ``hardswish``…) use their true
    gradient. ReLUs are found by their calls (``nn.ReLU`` modules, in-place or not, and
    ``F.relu``/``torch.relu``/``x.relu()``/``x.clamp(min=0)``), so functional ReLUs are covered.

    Against captum 0.9's ``GuidedBackprop``, which hooks ``nn.ReLU`` modules only: identical on
    networks whose ReLUs are all modules (resnet18, vgg11_bn, mobilenet_v3_small, where neither
    touches ``Hardswish``/``Hardsigmoid``); different where a network calls ReLU functionally,
    e.g. torchvision's DenseNet, whose final ``F.relu(features, inplace=True)`` captum leaves
    with its plain gradient.

    Signed per-channel maps ``(N, C, H, W)``, not normalised.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "guided_backprop").maps.shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """

    rule: ClassVar[RuleName] = "guided"


@ATTRIBUTIONS.register("deconvnet")
@dataclass(frozen=True)
class DeconvNet(_RuleGradient):
    """DeconvNet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks").

    The projection back to pixel space as a backward rule on plain gradients: every ReLU
    rectifies the signal going down, ``R_z = 1[R_a > 0] · R_a`` (whatever the forward ``z``);
    convolutions use their transposed filters (their true gradient) and max-pooling routes each
    value to the recorded argmax (the "switches"). ReLUs are found by their calls, so functional
    ReLUs are covered too (captum's ``Deconvolution`` only hooks ``nn.ReLU`` modules).

    Signed per-channel maps ``(N, C, H, W)``, not normalised.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "deconvnet").maps.shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """

    rule: ClassVar[RuleName] = "deconvnet"
