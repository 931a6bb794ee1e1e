from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from _model_state import HOOK_DICTS
from deepscope.hooks import HookSet


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, attr, {})) for m in model.modules() for attr in HOOK_DICTS)


class Boom(Exception):
    pass


class KwargsModule(nn.Module):
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return x * scale


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise Boom("forward failed")


class PairOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[str, tuple[torch.Tensor, torch.Tensor]]:
        return "tag", (x + 1, x + 2)


class NoTensorOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "nothing"


def test_forward_hook_fires_and_remove_is_idempotent(tiny_cnn, tiny_images):
    seen = []
    hooks = HookSet()
    handle = hooks.forward(tiny_cnn.fc, lambda m, args, out: seen.append(out.shape))
    assert handle.id in tiny_cnn.fc._forward_hooks
    assert len(hooks) == 1
    tiny_cnn(tiny_images)
    assert seen == [torch.Size([2, 10])]
    hooks.remove()
    assert len(hooks) == 0
    assert hook_count(tiny_cnn) == 0
    hooks.remove()  # second removal: no error, still empty
    assert len(hooks) == 0
    tiny_cnn(tiny_images)
    assert len(seen) == 1


def test_forward_hook_can_replace_output(tiny_cnn, tiny_images):
    with HookSet() as hooks:
        hooks.forward(tiny_cnn.fc, lambda m, args, out: torch.zeros_like(out))
        assert torch.equal(tiny_cnn(tiny_images), torch.zeros(2, 10))
    assert tiny_cnn(tiny_images).abs().sum() > 0


def test_exit_removes_hooks_when_block_raises(tiny_cnn, tiny_images):
    with pytest.raises(Boom), HookSet() as hooks:
        hooks.forward(tiny_cnn.fc, lambda m, a, o: None)
        hooks.forward_pre(tiny_cnn.features[0], lambda m, a: None, with_kwargs=False)
        hooks.full_backward(tiny_cnn.fc, lambda m, gi, go: None)
        hooks.full_backward_pre(tiny_cnn.fc, lambda m, go: None)
        assert hook_count(tiny_cnn) == 4
        raise Boom
    assert hook_count(tiny_cnn) == 0
    assert len(hooks) == 0


def test_exit_removes_hooks_when_a_hook_raises_during_forward(tiny_cnn, tiny_images):
    def bad_hook(module, args, output):
        raise Boom("hook failed")

    with pytest.raises(Boom), HookSet() as hooks:
        hooks.forward(tiny_cnn.features[0], lambda m, a, o: None)
        hooks.forward(tiny_cnn.features[4], bad_hook)
        tiny_cnn(tiny_images)
    assert hook_count(tiny_cnn) == 0


def test_remove_keeps_hooks_that_are_not_in_the_set(tiny_cnn, tiny_images):
    seen = []
    user_handle = tiny_cnn.fc.register_forward_hook(lambda m, a, o: seen.append(1))
    with HookSet() as hooks:
        hooks.forward(tiny_cnn.fc, lambda m, a, o: None)
    assert list(tiny_cnn.fc._forward_hooks) == [user_handle.id]
    tiny_cnn(tiny_images)
    assert seen == [1]


def test_forward_with_kwargs_and_pre_hook_with_kwargs():
    module = KwargsModule()
    seen = {}
    with HookSet() as hooks:
        hooks.forward(module, lambda m, args, kwargs, out: seen.update(kwargs=kwargs, out=out), with_kwargs=True)
        hooks.forward_pre(module, lambda m, args, kwargs: (args, {"scale": 10.0}), with_kwargs=True)
        out = module(torch.ones(2), scale=2.0)
        assert module._forward_hooks_with_kwargs and module._forward_pre_hooks_with_kwargs
    assert torch.equal(out, torch.full((2,), 10.0))
    assert seen["kwargs"] == {"scale": 10.0}
    assert not module._forward_hooks_with_kwargs
    assert not module._forward_pre_hooks_with_kwargs


def test_forward_pre_hook_replaces_inputs(tiny_cnn, tiny_images):
    with HookSet() as hooks:
        hooks.forward_pre(tiny_cnn.fc, lambda m, args: (torch.zeros_like(args[0]),))
        out = tiny_cnn(tiny_images)
    assert torch.allclose(out, tiny_cnn.fc.bias.expand(2, -1))


def test_always_call_runs_when_forward_raises():
    module = Failing()
    calls = []
    with HookSet() as hooks:
        hooks.forward(module, lambda m, a, o: calls.append("always"), always_call=True)
        hooks.forward(module, lambda m, a, o: calls.append("normal"))
        with pytest.raises(Boom):
            module(torch.ones(1))
    assert calls == ["always"]
    assert not module._forward_hooks and not module._forward_hooks_always_called


def test_full_backward_hook_sees_grad_output_and_can_replace_grad_input(generator):
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3, generator=generator, requires_grad=True)
    weight = torch.randn(4, 2, generator=generator)
    seen = {}

    def hook(module, grad_input, grad_output):
        seen["grad_output"] = grad_output[0].clone()
        return (grad_input[0] * 3,)

    with HookSet() as hooks:
        hooks.full_backward(layer, hook)
        (layer(x) * weight).sum().backward()
    assert torch.equal(seen["grad_output"], weight)
    assert torch.allclose(x.grad, 3 * weight @ layer.weight)


def test_full_backward_pre_hook_replaces_grad_output(generator):
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3, generator=generator, requires_grad=True)
    with HookSet() as hooks:
        hooks.full_backward_pre(layer, lambda m, grad_output: (grad_output[0] * 0,))
        layer(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert not layer._backward_pre_hooks


def test_full_backward_flag_is_reset_so_old_style_hooks_still_work():
    layer = nn.Linear(2, 2)
    assert layer._is_full_backward_hook is None
    with HookSet() as hooks:
        hooks.full_backward(layer, lambda m, gi, go: None)
        assert layer._is_full_backward_hook is True
    assert layer._is_full_backward_hook is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # register_backward_hook is deprecated, but users still call it
        layer.register_backward_hook(lambda m, gi, go: None)  # would raise if the flag were left True


def test_tensor_hook_modifies_gradient_and_is_removed():
    x = torch.ones(3, requires_grad=True)
    with HookSet() as hooks:
        hooks.tensor(x, lambda grad: grad * 2)
        (x * 1.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 3.0))
    x.grad = None
    (x * 1.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 1.5))
    assert not x._backward_hooks


def test_tensor_hook_requires_grad():
    with HookSet() as hooks, pytest.raises(ValueError, match="requires_grad_"):
        hooks.tensor(torch.ones(2), lambda g: g)


def test_capture_outputs_stores_outputs_and_transform(tiny_cnn, tiny_images):
    modules = {"conv": tiny_cnn.features[0], "head": tiny_cnn.fc}
    with HookSet() as hooks:
        plain = hooks.capture_outputs(modules)
        detached = hooks.capture_outputs(modules, transform=lambda t: t.detach()[:1])
        assert plain == {} and detached == {}
        out = tiny_cnn(tiny_images)
    assert list(plain) == ["conv", "head"]
    assert plain["head"] is out
    assert plain["conv"].shape == (2, 4, 8, 8)
    assert plain["conv"].requires_grad
    assert not detached["conv"].requires_grad
    assert detached["head"].shape == (1, 10)
    assert torch.equal(detached["head"], out[:1].detach())
    assert hook_count(tiny_cnn) == 0


def test_capture_outputs_later_calls_overwrite(tiny_cnn, generator):
    first = torch.randn(2, 3, 8, 8, generator=generator)
    second = torch.randn(3, 3, 8, 8, generator=generator)
    with HookSet() as hooks:
        captured = hooks.capture_outputs({"fc": tiny_cnn.fc})
        tiny_cnn(first)
        out = tiny_cnn(second)
    assert captured["fc"] is out


def test_capture_outputs_first_tensor_of_nested_outputs_and_skips_non_tensors():
    pair, empty = PairOutput(), NoTensorOutput()
    with HookSet() as hooks:
        captured = hooks.capture_outputs({"pair": pair, "empty": empty})
        pair(torch.zeros(2))
        empty(torch.zeros(2))
    assert list(captured) == ["pair"]
    assert torch.equal(captured["pair"], torch.ones(2))


def test_capture_outputs_rejects_non_modules():
    with HookSet() as hooks, pytest.raises(TypeError, match="'x' is str"):
        hooks.capture_outputs({"x": "conv1"})  # type: ignore[dict-item]
