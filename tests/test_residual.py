"""Residual flow: ‖F(x)‖ / ‖skip(x)‖ of torchvision blocks and of declared x + F(x) modules, checked by hand."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from deepscope.recorder import TAGS, Recorder
from deepscope.residual import find_residual_blocks
from deepscope.store import RunReader


def _one_measured_step(model, inputs, run_dir, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, run_dir, every=1, **kwargs) as rec:
        loss = model(inputs).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.step(loss=loss)
    with RunReader(run_dir) as reader:
        return reader.meta()[TAGS.RESIDUAL_BLOCKS], reader.tensor(TAGS.RESIDUAL, 1)


def test_torchvision_blocks_are_found():
    assert find_residual_blocks(resnet18(weights=None)) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert len(find_residual_blocks(resnet50(weights=None))) == 16


def test_resnet_block_ratios_match_a_hand_measurement(tmp_path, generator):
    model = resnet18(weights=None).train()
    inputs = torch.randn(2, 3, 32, 32, generator=generator)
    expected = {}
    handles = []

    def keep(store, key, tensor):  # a hook that returns None leaves the forward pass alone
        store.setdefault(key, tensor.norm())

    for name in find_residual_blocks(model):
        block = model.get_submodule(name)
        store = expected.setdefault(name, {})
        handles.append(block.bn2.register_forward_hook(lambda m, a, o, s=store: keep(s, "f", o)))
        if block.downsample is not None:
            handles.append(block.downsample.register_forward_hook(lambda m, a, o, s=store: keep(s, "x", o)))
        else:
            handles.append(block.register_forward_pre_hook(lambda m, a, s=store: keep(s, "x", a[0])))
    with torch.no_grad():
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model(inputs)  # the hand measurement, on the same weights and batch statistics
        model.load_state_dict(state)
    for handle in handles:
        handle.remove()
    blocks, ratios = _one_measured_step(model, inputs, tmp_path)
    assert blocks == list(expected)
    reference = torch.tensor([float(expected[b]["f"] / expected[b]["x"]) for b in blocks])
    torch.testing.assert_close(torch.from_numpy(ratios), reference, rtol=1e-4, atol=0)


class Residual(nn.Module):
    """y = x + F(x), the form of a transformer sub-block."""

    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)
        self.scale = scale

    def forward(self, x):
        return x + self.scale * self.f(x)


def test_declared_blocks_use_the_output_minus_the_input(tmp_path, generator):
    torch.manual_seed(0)
    model = nn.Sequential(Residual(6, 0.1), nn.ReLU(), Residual(6, 2.0), nn.Linear(6, 2))
    inputs = torch.randn(5, 6, generator=generator)
    with torch.no_grad():
        first = 0.1 * model[0].f(inputs)
        hidden = torch.relu(inputs + first)
        second = 2.0 * model[2].f(hidden)
    blocks, ratios = _one_measured_step(model, inputs, tmp_path, residual=["0", model[2]])
    assert blocks == ["0", "2"]
    expected = [float(first.norm() / inputs.norm()), float(second.norm() / hidden.norm())]
    torch.testing.assert_close(torch.from_numpy(ratios), torch.tensor(expected), rtol=1e-4, atol=0)


def test_a_declared_block_must_keep_the_shape(tmp_path, generator):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="must return x \\+ F\\(x\\)"):
        _one_measured_step(model, torch.randn(2, 4, generator=generator), tmp_path, residual=["0"])
    assert not any(len(m._forward_hooks) or len(m._forward_pre_hooks) for m in model.modules())


def test_the_report_draws_the_residual_ratios(tmp_path, generator):
    from deepscope.report import build_report

    model = resnet18(weights=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, tmp_path / "run", every=1, name="resnet") as rec:
        for _ in range(3):
            loss = model(torch.randn(2, 3, 32, 32, generator=generator)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss=loss)
    build_report(tmp_path / "run")
    assert (tmp_path / "run" / "figures" / "health_resnet.png").stat().st_size > 0
