"""Model-state contract: no deepscope call leaves a trace on the user's model, also when it raises.

Every entry of ``MODEL_CALLS`` runs on several torchvision architectures and the demo MLP, in
train and in eval mode, on a model that carries user gradients, user hooks and in-place
activations. Before and after the call, :func:`fingerprint` captures every module's
``training`` and ``inplace`` flags and hook dictionaries, and every parameter's and buffer's
identity, value, ``requires_grad``, ``.grad`` (identity and values) and tensor hooks; the two
must be bit-identical.

To enrol a new public API, add ``MODEL_CALLS["name"] = fn`` with ``fn(model, inputs) -> None``.
A call that is expected to raise asserts it inside ``fn`` (see ``_list_layers_raises``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision import models

from _model_state import assert_unchanged, fingerprint
from _zoo import slim_vgg11_bn
from deepscope.attribution import ATTRIBUTIONS, compare, explain
from deepscope.attribution.metrics import deletion_curve, insertion_curve
from deepscope.attribution.sanity import sanity_check
from deepscope.guard import preserved
from deepscope.hooks import HookSet
from deepscope.layers import list_layers, resolve_layers
from deepscope.recorder import Recorder

_IMAGE = (2, 3, 32, 32)


# name -> (builder or the name of a conftest builder, input shape)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module] | str, tuple[int, ...]]] = {
    "resnet18": (lambda: models.resnet18(weights=None), _IMAGE),
    "vgg11_bn": (slim_vgg11_bn, _IMAGE),
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(weights=None), _IMAGE),
    "densenet121": (lambda: models.densenet121(weights=None), _IMAGE),
    "demo_mlp": ("demo_mlp", (8, 2)),
}


# --------------------------------------------------------------------------- calls


class Boom(Exception):
    pass


def _last_linear(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _first_leaf(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if next(m.children(), None) is None)


def _list_layers(model: nn.Module, inputs: Tensor) -> None:
    infos = list_layers(model, inputs)
    assert any(info.output_shape is not None for info in infos)


def _list_layers_without_input(model: nn.Module, inputs: Tensor) -> None:
    assert all(info.output_shape is None for info in list_layers(model, leaves_only=True))


def _list_layers_raises(model: nn.Module, inputs: Tensor) -> None:
    """One extra input channel/feature makes the first layer fail after hooks and eval mode are set."""
    seen = []
    first = _first_leaf(model)
    probe = first.register_forward_pre_hook(lambda m, a: seen.append((model.training, len(m._forward_hooks))))
    try:
        with pytest.raises(RuntimeError):
            list_layers(model, torch.cat([inputs, inputs[:, :1]], dim=1))
    finally:
        probe.remove()
    assert seen == [(False, 1)]  # eval mode was set and list_layers' hook was in place


def _mutate_everything(model: nn.Module, inputs: Tensor) -> None:
    """Change every piece of state ``preserved`` promises to restore (deliberately, with raw torch calls)."""
    with preserved(model, inputs) as state:
        model.train(not model.training)
        params = list(model.parameters())
        for param in params[1::2]:
            param.requires_grad_(False)
        head, first = _last_linear(model), _first_leaf(model)
        head.register_forward_hook(lambda m, a, o: None)
        head.register_forward_hook(lambda m, a, kw, o: None, with_kwargs=True, always_call=True)
        first.register_forward_pre_hook(lambda m, a, kw: None, with_kwargs=True)
        head.register_full_backward_hook(lambda m, gi, go: None)
        head.register_full_backward_pre_hook(lambda m, go: None)
        params[0].register_hook(lambda g: g * 2)
        params[0].register_post_accumulate_grad_hook(lambda p: None)
        assert state.disable_inplace() >= 1
        torch.set_grad_enabled(True)
        model.train()
        with torch.random.fork_rng(devices=[]):  # dropout must not consume the global RNG
            model(inputs).sum().backward()
        for param in params:
            if param.grad is not None:
                param.grad.mul_(3)
        with torch.no_grad():
            for buffer in model.buffers():
                buffer.add_(1)
        torch.set_grad_enabled(False)


def _preserved_block_mutates(model: nn.Module, inputs: Tensor) -> None:
    _mutate_everything(model, inputs)


def _preserved_block_mutates_then_raises(model: nn.Module, inputs: Tensor) -> None:
    def run() -> None:
        with preserved(model, inputs):
            _mutate_everything(model, inputs)
            raise Boom("analysis failed half-way")

    with pytest.raises(Boom):
        run()


def _capture_outputs(model: nn.Module, inputs: Tensor) -> None:
    """The pattern analyses use: guard, eval, HookSet, no-grad forward."""
    names = [name for name, m in model.named_modules() if name and next(m.children(), None) is None][-2:]
    with preserved(model, inputs, grads=False), HookSet() as hooks, torch.no_grad():
        model.eval()
        captured = hooks.capture_outputs(resolve_layers(model, names), transform=Tensor.detach)
        model(inputs)
    assert list(captured) == names


def _recorder_kwargs(model: nn.Module, inputs: Tensor) -> dict[str, Any]:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        was_training = model.training
        model.eval()
        width = model(inputs).shape[-1]
        model.train(was_training)
    labels = torch.arange(inputs.shape[0]) % max(width, 2)
    leaves = [name for name, m in model.named_modules() if name and next(m.children(), None) is None]
    return {
        "probe": (inputs, labels),
        "layers": [leaves[0], leaves[-2]],
        "every": 1,
        "predict": "probability" if width == 1 else "argmax",
    }


def _recorder_records(model: nn.Module, inputs: Tensor) -> None:
    with tempfile.TemporaryDirectory() as tmp, Recorder(model, tmp, **_recorder_kwargs(model, inputs)) as rec:
        rec.step(loss=1.0)
        rec.step(loss=0.5, metrics={"lr": 0.1})
        rec.log_tensor("custom", torch.zeros(3))


def _recorder_raises_in_probe(model: nn.Module, inputs: Tensor) -> None:
    """A probe with one extra channel fails inside the snapshot, after eval mode and hooks were set."""
    kwargs = _recorder_kwargs(model, inputs)
    kwargs["probe"] = (torch.cat([inputs, inputs[:, :1]], dim=1), kwargs["probe"][1])
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(RuntimeError), Recorder(model, tmp, **kwargs) as rec:
        rec.step(loss=1.0)


# Cheap settings so every registered method runs on every architecture in seconds (filtered per method).
FAST_PARAMS = {"n_steps": 4, "n_samples": 2, "top_k": 4, "n_masks": 16, "window": 16, "stride": 16, "batch_size": 8}


def _explain(name: str, model: nn.Module, inputs: Tensor) -> None:
    """Every registered attribution method: a valid map on images; a clear error where it does not apply."""
    cls = ATTRIBUTIONS.get(name)
    accepted = inspect.signature(cls).parameters
    params = {k: v for k, v in FAST_PARAMS.items() if k in accepted}
    if "generator" in accepted:
        params["generator"] = torch.Generator().manual_seed(0)
    if inputs.ndim != 4 and (cls.needs_layer or name in IMAGE_ONLY_METHODS):
        with pytest.raises((ValueError, TypeError)):
            explain(model, inputs, name, **params)
        return
    try:
        result = explain(model, inputs, name, **params)
    except ValueError as error:  # some methods apply to some architectures only; elsewhere they say why
        if name not in NEEDS_ARCHITECTURE:
            raise
        assert NEEDS_ARCHITECTURE[name] in str(error)
        return
    maps = result.maps
    assert maps.dtype == torch.float32 and not maps.requires_grad and torch.isfinite(maps).all()
    assert maps.shape[0] == inputs.shape[0]
    if inputs.ndim == 4:  # images: maps at input resolution, (N, H, W) or (N, C, H, W)
        assert maps.shape[-2:] == inputs.shape[-2:]
    else:  # vectors: per-feature maps
        assert maps.shape == inputs.shape
    assert result.scores.shape == (inputs.shape[0],)


IMAGE_ONLY_METHODS = {"occlusion", "rise"}
NEEDS_ARCHITECTURE = {"cam": "global average pooling"}


def _explain_raises(model: nn.Module, inputs: Tensor) -> None:
    """A target out of range fails inside explain(), after the guard took its snapshot."""
    with pytest.raises(ValueError, match="out of range"):
        explain(model, inputs, "saliency", target=10**6)


def _faithfulness(model: nn.Module, inputs: Tensor) -> None:
    """Deletion and insertion curves, and compare() with its localisation scores; images only."""
    maps = torch.rand(inputs.shape[0], *inputs.shape[2:], generator=torch.Generator().manual_seed(0))
    if inputs.ndim != 4:
        with pytest.raises(ValueError, match="images"):
            deletion_curve(model, inputs, torch.rand_like(inputs))
        return
    deletion_curve(model, inputs, maps, steps=4)
    insertion_curve(model, inputs, maps, steps=4, baseline="mean")
    masks = torch.zeros(inputs.shape[0], *inputs.shape[2:], dtype=torch.bool)
    masks[:, :8, :8] = True
    compare(model, inputs, ["saliency"], ["deletion", "pointing_game"], masks=masks, steps=4)


def _sanity_check(model: nn.Module, inputs: Tensor) -> None:
    """The cascade randomises a deep copy; the user's model must come out untouched."""
    check = sanity_check(model, inputs[:1], "saliency", similarity="spearman", generator=torch.Generator())
    assert len(check.layers) >= 2


MODEL_CALLS: dict[str, Callable[[nn.Module, Tensor], None]] = {
    **{f"explain:{name}": functools.partial(_explain, name) for name in ATTRIBUTIONS.names()},
    "explain_raises": _explain_raises,
    "faithfulness": _faithfulness,
    "sanity_check": _sanity_check,
    "recorder_records": _recorder_records,
    "recorder_raises_in_probe": _recorder_raises_in_probe,
    "list_layers": _list_layers,
    "list_layers_without_input": _list_layers_without_input,
    "list_layers_raises": _list_layers_raises,
    "preserved_block_mutates": _preserved_block_mutates,
    "preserved_block_mutates_then_raises": _preserved_block_mutates_then_raises,
    "capture_outputs": _capture_outputs,
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def templates(model_builders) -> Callable[[str, bool], tuple[nn.Module, Tensor]]:
    """Build each architecture once, and once per mode give it user gradients and in-place ReLUs."""
    bases: dict[str, nn.Module] = {}
    prepared: dict[tuple[str, bool], tuple[nn.Module, Tensor]] = {}

    def get(arch: str, training: bool) -> tuple[nn.Module, Tensor]:
        if (arch, training) not in prepared:
            build, shape = ARCHITECTURES[arch]
            if arch not in bases:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    bases[arch] = model_builders[build]() if isinstance(build, str) else build()
            model = copy.deepcopy(bases[arch]).train(training)
            switchable = [m for m in model.modules() if getattr(m, "inplace", None) is False]
            for module in [m for m in switchable if not isinstance(m, nn.Dropout)][:2]:
                module.inplace = True
            inputs = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            with torch.random.fork_rng(devices=[]):
                model(inputs).sum().backward()  # gradients "the user accumulated"
            for param in model.parameters():
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            prepared[arch, training] = model, inputs
        return prepared[arch, training]

    return get


@pytest.fixture(params=[True, False], ids=["train", "eval"])
def training(request) -> bool:
    return request.param


@pytest.fixture(params=list(ARCHITECTURES))
def subject(request, templates, training) -> tuple[nn.Module, Tensor]:
    """A fresh copy of the template, with its gradients and a user module hook and tensor hook."""
    template, inputs = templates(request.param, training)
    model = copy.deepcopy(template)  # deepcopy does not copy .grad
    for param, source in zip(model.parameters(), template.parameters(), strict=True):
        param.grad = source.grad.clone()
    _last_linear(model).register_forward_hook(lambda m, a, o: None)
    next(model.parameters()).register_hook(lambda g: None)
    assert any(getattr(m, "inplace", None) is True for m in model.modules())
    return model, inputs.clone()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("call", list(MODEL_CALLS))
def test_call_leaves_model_unchanged(subject, call):
    model, inputs = subject
    before = fingerprint(model)
    MODEL_CALLS[call](model, inputs)
    assert_unchanged(before, fingerprint(model))
    assert not inputs.requires_grad and inputs.grad is None


def test_fingerprint_detects_each_kind_of_change(model_builders, generator):
    """Guards the contract test itself: every mutation below must show in the fingerprint."""
    model = model_builders["tiny_cnn"]()
    model(torch.randn(2, 3, 8, 8, generator=generator)).sum().backward()
    mutations: dict[str, Callable[[nn.Module], object]] = {
        "training": lambda m: m.fc.eval(),
        "requires_grad": lambda m: m.fc.weight.requires_grad_(False),
        "grad object": lambda m: setattr(m.fc.weight, "grad", m.fc.weight.grad.clone()),
        "grad value": lambda m: m.fc.weight.grad.add_(1),
        "grad removed": lambda m: setattr(m.fc.weight, "grad", None),
        "forward hook": lambda m: m.fc.register_forward_hook(lambda *a: None),
        "pre-hook with kwargs": lambda m: m.fc.register_forward_pre_hook(lambda *a: None, with_kwargs=True),
        "full backward hook": lambda m: m.fc.register_full_backward_hook(lambda *a: None),
        "backward pre-hook": lambda m: m.fc.register_full_backward_pre_hook(lambda *a: None),
        "tensor hook": lambda m: m.fc.weight.register_hook(lambda g: g),
        "post-accumulate hook": lambda m: m.fc.weight.register_post_accumulate_grad_hook(lambda p: None),
        "inplace": lambda m: setattr(m.features[2], "inplace", False),
        "parameter value": lambda m: m.fc.bias.data.add_(1),
        "parameter object": lambda m: setattr(m.fc, "bias", nn.Parameter(m.fc.bias.detach().clone())),
        "buffer value": lambda m: m.features[1].running_mean.add_(1),
        "buffer counter": lambda m: m.features[1].num_batches_tracked.add_(1),
        "grad mode": lambda m: torch.set_grad_enabled(False),
    }
    for what, mutate in mutations.items():
        subject = copy.deepcopy(model)
        for param, source in zip(subject.parameters(), model.parameters(), strict=True):
            param.grad = source.grad.clone()
        before = fingerprint(subject)
        try:
            mutate(subject)
            after = fingerprint(subject)
        finally:
            torch.set_grad_enabled(True)
        with pytest.raises(AssertionError):
            assert_unchanged(before, after)
            pytest.fail(f"fingerprint missed: {what}")
