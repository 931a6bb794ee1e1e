from __future__ import annotations

import pytest
import torch
from torch import nn

from deepscope.guard import PreservedState, preserved
from deepscope.hooks import HookSet


class Boom(Exception):
    pass


class Stubborn(nn.Module):
    """A module whose ``inplace`` flag cannot be set back once ``locked``: restoring it fails."""

    def __init__(self) -> None:
        super().__init__()
        self._inplace = True
        self.locked = False

    @property
    def inplace(self) -> bool:
        return self._inplace

    @inplace.setter
    def inplace(self, value: bool) -> None:
        if self.locked:
            raise RuntimeError("inplace is locked")
        self._inplace = value


def give_grads(model: nn.Module, x: torch.Tensor) -> None:
    model(x).sum().backward()


def test_training_flags_restored_per_module(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn.features[1].eval()  # a frozen BN inside a training model
    before = [m.training for m in tiny_cnn.modules()]
    with preserved(tiny_cnn):
        tiny_cnn.eval()
        assert not tiny_cnn.features[1].training and not tiny_cnn.training
    assert [m.training for m in tiny_cnn.modules()] == before


def test_requires_grad_restored(tiny_cnn):
    tiny_cnn.features[0].requires_grad_(False)
    before = [p.requires_grad for p in tiny_cnn.parameters()]
    with preserved(tiny_cnn):
        for p in tiny_cnn.parameters():
            p.requires_grad_(not p.requires_grad)
    assert [p.requires_grad for p in tiny_cnn.parameters()] == before


def test_user_grads_survive_backward_inside(tiny_cnn, tiny_images):
    give_grads(tiny_cnn, tiny_images)
    tiny_cnn.fc.bias.grad = None  # a parameter without a gradient stays without one
    grads = {name: p.grad for name, p in tiny_cnn.named_parameters()}
    values = {name: g.clone() for name, g in grads.items() if g is not None}
    with preserved(tiny_cnn):
        assert all(p.grad is None for p in tiny_cnn.parameters())  # set aside: nothing accumulates into them
        give_grads(tiny_cnn, tiny_images)
        assert tiny_cnn.fc.bias.grad is not None
    for name, p in tiny_cnn.named_parameters():
        assert p.grad is grads[name]
        if p.grad is not None:
            assert torch.equal(p.grad, values[name])
    assert tiny_cnn.fc.bias.grad is None


def test_grads_false_keeps_grads_visible_and_restores_the_objects(tiny_cnn, tiny_images):
    give_grads(tiny_cnn, tiny_images)
    grads = [p.grad for p in tiny_cnn.parameters()]
    with preserved(tiny_cnn, grads=False):
        assert [p.grad for p in tiny_cnn.parameters()] == grads
        tiny_cnn.zero_grad(set_to_none=True)
    assert all(p.grad is g for p, g in zip(tiny_cnn.parameters(), grads, strict=True))


def test_buffers_restored_after_training_forward(tiny_cnn, tiny_images):
    bn = tiny_cnn.features[1]
    mean, var, count = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    buffer_objects = [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    with preserved(tiny_cnn):
        tiny_cnn.train()
        tiny_cnn(tiny_images)
        assert not torch.equal(bn.running_mean, mean)
        bn.running_var = torch.zeros(4)  # replacing a buffer object is undone too
    assert [bn.running_mean, bn.running_var, bn.num_batches_tracked] == buffer_objects
    assert torch.equal(bn.running_mean, mean)
    assert torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, count)


def test_replaced_submodule_and_parameter_are_put_back(tiny_cnn):
    fc, weight = tiny_cnn.fc, tiny_cnn.features[0].weight
    with preserved(tiny_cnn):
        tiny_cnn.fc = nn.Identity()
        tiny_cnn.features[0].weight = nn.Parameter(torch.zeros_like(weight))
    assert tiny_cnn.fc is fc
    assert tiny_cnn.features[0].weight is weight


def test_module_hooks_restored(tiny_cnn, tiny_images):
    calls = []
    user = tiny_cnn.fc.register_forward_hook(lambda m, a, o: calls.append("user"))
    with preserved(tiny_cnn):
        user.remove()  # removed inside: comes back
        tiny_cnn.fc.register_forward_hook(lambda m, a, o: calls.append("leak"))
        tiny_cnn.fc.register_forward_hook(lambda m, a, kw, o: None, with_kwargs=True, always_call=True)
        tiny_cnn.features[0].register_forward_pre_hook(lambda m, a, kw: None, with_kwargs=True)
        tiny_cnn.fc.register_full_backward_hook(lambda m, gi, go: None)
        tiny_cnn.fc.register_full_backward_pre_hook(lambda m, go: None)
    assert list(tiny_cnn.fc._forward_hooks) == [user.id]
    for module in tiny_cnn.modules():
        assert not module._forward_hooks_with_kwargs
        assert not module._forward_hooks_always_called
        assert not module._forward_pre_hooks
        assert not module._forward_pre_hooks_with_kwargs
        assert not module._backward_hooks
        assert not module._backward_pre_hooks
    assert tiny_cnn.fc._is_full_backward_hook is None
    tiny_cnn(tiny_images)
    assert calls == ["user"]


def test_parameter_tensor_hooks_restored(tiny_cnn, tiny_images):
    seen = []
    weight = tiny_cnn.fc.weight
    user = weight.register_hook(lambda g: seen.append("user"))
    with preserved(tiny_cnn):
        weight.register_hook(lambda g: seen.append("leak"))
        tiny_cnn.fc.bias.register_hook(lambda g: seen.append("leak"))
        tiny_cnn.fc.bias.register_post_accumulate_grad_hook(lambda p: seen.append("leak"))
    assert list(weight._backward_hooks) == [user.id]
    assert tiny_cnn.fc.bias._backward_hooks is None
    assert tiny_cnn.fc.bias._post_accumulate_grad_hooks is None
    give_grads(tiny_cnn, tiny_images)
    assert seen == ["user"]


def test_grad_mode_restored():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        with preserved(model):
            torch.set_grad_enabled(True)
        assert not torch.is_grad_enabled()
    with preserved(model):
        torch.set_grad_enabled(False)
    assert torch.is_grad_enabled()


def test_disable_inplace_counts_and_restores(tiny_cnn):
    tiny_cnn.features[5].inplace = False
    with preserved(tiny_cnn) as state:
        assert isinstance(state, PreservedState)
        assert state.disable_inplace() == 1
        assert tiny_cnn.features[2].inplace is False
        assert state.disable_inplace() == 0
        tiny_cnn.features[5].inplace = True  # switched directly: also restored
    assert tiny_cnn.features[2].inplace is True
    assert tiny_cnn.features[5].inplace is False


def test_tensors_requires_grad_grad_and_hooks_restored(generator):
    model = nn.Linear(3, 1)
    x = torch.randn(2, 3, generator=generator)
    y = torch.randn(2, 3, generator=generator, requires_grad=True)
    y.grad = torch.ones(2, 3)
    y_grad = y.grad
    with preserved(model, x, y):
        x.requires_grad_()
        model(x).sum().backward()
        assert x.grad is not None
        assert y.grad is None
        (model(y).sum() * 5).backward()
        y.register_hook(lambda g: g)
    assert not x.requires_grad and x.grad is None
    assert y.requires_grad and y.grad is y_grad and torch.equal(y_grad, torch.ones(2, 3))
    assert y._backward_hooks is None


def test_everything_restored_when_block_raises(tiny_cnn, tiny_images):
    tiny_cnn.eval()
    give_grads(tiny_cnn, tiny_images)
    grads = [p.grad.clone() for p in tiny_cnn.parameters()]
    with pytest.raises(Boom, match="inside"), preserved(tiny_cnn) as state:
        state.disable_inplace()
        tiny_cnn.train()
        tiny_cnn.fc.weight.requires_grad_(False)
        tiny_cnn.fc.register_forward_hook(lambda m, a, o: None)
        give_grads(tiny_cnn, tiny_images)
        torch.set_grad_enabled(False)
        raise Boom("inside")
    assert torch.is_grad_enabled()
    assert not any(m.training for m in tiny_cnn.modules())
    assert tiny_cnn.fc.weight.requires_grad
    assert not tiny_cnn.fc._forward_hooks
    assert tiny_cnn.features[2].inplace
    assert all(torch.equal(p.grad, g) for p, g in zip(tiny_cnn.parameters(), grads, strict=True))


def test_one_failed_restoration_does_not_skip_the_others():
    stubborn = Stubborn()
    model = nn.Sequential(nn.Linear(2, 2), stubborn).train()
    with pytest.raises(RuntimeError, match="inplace flag: RuntimeError: inplace is locked") as info, preserved(model):
        model.eval()
        stubborn.inplace = False
        stubborn.locked = True
    assert isinstance(info.value.__cause__, RuntimeError)
    assert all(m.training for m in model.modules())  # restored although the flag failed


def test_failed_restoration_does_not_mask_the_block_error():
    stubborn = Stubborn()
    model = nn.Sequential(nn.Linear(2, 2), stubborn).train()
    with pytest.warns(UserWarning, match="could not restore"), pytest.raises(Boom), preserved(model):
        model.eval()
        stubborn.inplace = False
        stubborn.locked = True
        raise Boom
    assert model.training


def test_nested_blocks_restore_in_order(tiny_cnn):
    tiny_cnn.train()
    with preserved(tiny_cnn):
        tiny_cnn.eval()
        with preserved(tiny_cnn) as inner:
            inner.disable_inplace()
            tiny_cnn.train()
        assert not tiny_cnn.training and tiny_cnn.features[2].inplace is True
    assert tiny_cnn.training


def test_misuse_raises():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        preserved("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argument 1 is list"):
        preserved(model, [1, 2])  # type: ignore[arg-type]
    state = preserved(model)
    with pytest.raises(RuntimeError, match="inside"):
        state.disable_inplace()
    with state, pytest.raises(RuntimeError, match="twice"), state:
        pass


class _SelfHooking(nn.Module):
    """Registers a forward hook on its first call and remembers it did (as Hugging Face output recorders do)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.installed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.installed:
            self.linear.register_forward_hook(lambda _m, _a, out: None)
            self.installed = True
        return self.linear(x)


def test_the_model_s_own_new_hooks_can_be_kept_and_ours_never_are():
    for keep in (False, True):
        model = _SelfHooking()
        with preserved(model, keep_model_hooks=keep), HookSet() as hooks:
            hooks.forward(model, lambda _m, _a, out: None)
            model(torch.zeros(1, 2))
        assert len(model.linear._forward_hooks) == (1 if keep else 0) and not model._forward_hooks
