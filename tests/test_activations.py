"""Streaming layer statistics, the Zeiler–Fergus top-k with patches and DeconvNet projections."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepscope.attribution.backprop_rules import relu_rules
from deepscope.deconv import _one_hot_seed, deconv_project, strongest_units
from deepscope.guard import preserved
from deepscope.layer_stats import activations, top_activations


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


@pytest.fixture
def images(generator):
    return torch.rand(37, 3, 12, 12, generator=generator)


def test_streaming_statistics_equal_the_full_batch(images):
    model = _cnn()
    stats = activations(model, images, ["2", "5"], batch_size=5, example=3)
    model.eval()
    with torch.no_grad():
        relu = model[:3](images)  # (37, 6, 12, 12)
        sigmoid = model[:6](images)
    per_channel = relu.transpose(0, 1).reshape(6, -1).double()
    s = stats.layers["2"]
    assert stats.images == 37 and s.count == 37 * 144
    torch.testing.assert_close(s.mean, per_channel.mean(1))
    torch.testing.assert_close(s.std, per_channel.std(1))
    torch.testing.assert_close(s.max, per_channel.max(1).values)
    torch.testing.assert_close(s.zero_fraction, (per_channel == 0).double().mean(1))
    assert torch.isnan(s.saturation).all()  # ReLU is unbounded
    values = sigmoid.transpose(0, 1).reshape(8, -1)
    expected = ((values <= 0.01) | (values >= 0.99)).double().mean(1)
    torch.testing.assert_close(stats.layers["5"].saturation, expected)
    torch.testing.assert_close(s.example, relu[3])
    assert s.sampled == relu.numel()  # small outputs: every value in the histogram
    assert int(s.histogram.sum()) + s.below + s.above == relu.numel()  # nothing lost outside the range
    loader = DataLoader(TensorDataset(images, torch.zeros(37)), batch_size=8)
    torch.testing.assert_close(activations(model, loader, "2").layers["2"].mean, s.mean)


def test_the_projection_starts_from_one_activation_and_unpools_at_the_switches(generator):
    activation = torch.rand(2, 3, 4, 4, generator=generator)
    seed = _one_hot_seed(activation, torch.tensor([[1, 2, 3], [0, 0, 1]]))
    assert [int((s != 0).sum()) for s in seed] == [1, 1] and seed[0, 1, 2, 3] == activation[0, 1, 2, 3]
    pool = nn.Sequential(nn.MaxPool2d(2))
    x = torch.rand(1, 1, 4, 4, generator=generator)
    projection = deconv_project(pool, x, "0", torch.tensor([[0, 1, 0]]))  # the window rows 2-3, columns 0-1
    window = x[0, 0, 2:4, 0:2]
    argmax = divmod(int(window.argmax()), 2)
    expected = torch.zeros(4, 4)
    expected[2 + argmax[0], argmax[1]] = window.max()
    torch.testing.assert_close(projection[0, 0], expected)  # written only at the switch


def test_the_projection_is_the_deconvnet_gradient_of_the_unit(images):
    model = _cnn()
    x = images[:4]
    units = strongest_units(model[:4].eval()(x))
    projection = deconv_project(model, x, "3", units)
    with preserved(model):
        model.eval()
        inputs = x.clone().requires_grad_()
        with relu_rules("deconvnet"):
            out = model[:4](inputs)
            score = sum(out[n, c, i, j] * out[n, c, i, j].detach() for n, (c, i, j) in enumerate(units.tolist()))
            (expected,) = torch.autograd.grad(score, inputs)
    torch.testing.assert_close(projection, expected)


def test_top_k_is_sorted_distinct_with_exact_patches(images):
    model = _cnn()
    top = top_activations(model, images, "3", channels=[0, 5], k=4, batch_size=6)
    model.eval()
    with torch.no_grad():
        maps = model[:4](images)[:, [0, 5]]  # (37, 2, 6, 6)
    spatial_max = maps.flatten(2).max(2).values  # (37, 2)
    for c in range(2):
        expected = spatial_max[:, c].topk(4)
        torch.testing.assert_close(top.scores[c], expected.values)
        assert top.indices[c].tolist() == expected.indices.tolist() and len(set(top.indices[c].tolist())) == 4
    assert top.field.size == (4, 4) and top.field.jump == (2, 2) and top.field.start == (-1, -1)
    for c in range(2):  # every unit is its map's (first) argmax, whichever batch it was found in
        argmax = maps[top.indices[c], c].flatten(1).argmax(1)
        assert top.positions[c].tolist() == torch.stack([argmax // 6, argmax % 6], 1).tolist()
    c, r = 1, 0
    i, j = top.positions[c, r].tolist()
    t, left, b, right = top.boxes[c, r].tolist()
    dy, dx = t - (-1 + 2 * i), left - (-1 + 2 * j)
    image = images[top.indices[c, r]]
    assert torch.equal(top.patches[c, r][:, dy : dy + b - t, dx : dx + right - left], image[:, t:b, left:right])
    assert top.inside[c, r].sum() == (b - t) * (right - left)
    assert top.projections is not None and top.projections.shape == top.patches.shape


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layer": "8"}, ValueError, "spatial layer"),
        ({"layer": "3", "k": 100}, ValueError, "k=100 is more than the 37 images"),
        ({"layer": "3", "channels": [6]}, ValueError, r"channels must be in \[0, 6\)"),
        ({"layer": "conv"}, Exception, "conv"),
    ],
)
def test_bad_top_k_requests_are_explained(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        top_activations(_cnn(), images, **kwargs)


def test_a_shuffled_loader_cannot_give_its_images_back(images):
    loader = DataLoader(TensorDataset(images), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        top_activations(_cnn(), loader, "3", k=2)


def test_the_model_is_left_as_it_was(images):
    model = _cnn()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    activations(model, images, ["2"])
    top_activations(model, images, "3", k=2)
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules()) and all(p.grad is None for p in model.parameters())
