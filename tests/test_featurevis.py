"""Feature visualisation: the linear-unit optimum, rising objectives, diversity, reproducibility, model state."""

import pytest
import torch
from torch import nn

from deepscope.attribution.backprop_rules import relu_rules
from deepscope.errors import LayerNotFoundError
from deepscope.featurevis import feature_vis, feature_vis_grid, record_feature_vis
from deepscope.featurevis import objectives as obj
from deepscope.featurevis.objectives import IMAGE, OUTPUT
from deepscope.featurevis.param import COLOR_CORRELATION, Fourier, Pixels, color_correlation
from deepscope.featurevis.transforms import (
    STANDARD,
    _resample,
    compose,
    jitter,
    pad,
    random_affine,
    random_rotate,
    random_scale,
)
from deepscope.report import build_report


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


def test_a_linear_unit_with_a_norm_constraint_is_maximised_by_its_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    image = Pixels(1, (8, 8), squash="unit_norm", generator=torch.Generator().manual_seed(1))
    result = feature_vis(model, obj.class_logit(2), param=image, transforms="none", steps=400, lr=0.05, redirect=0)
    weights = model[1].weight[2].detach()
    cosine = torch.nn.functional.cosine_similarity(result.images.flatten(), weights, dim=0)
    assert cosine > 0.999


def test_the_objective_rises_and_the_same_seed_gives_the_same_image():
    model = _cnn()
    runs = [
        feature_vis(model, "4:3", size=24, steps=60, generator=torch.Generator().manual_seed(seed))
        for seed in (7, 7, 8)
    ]
    curve = runs[0].curve[:, 0]
    assert curve[-10:].mean() > curve[:10].mean() + 0.01  # -0.129 -> -0.112 on this random CNN
    assert torch.equal(runs[0].images, runs[1].images) and not torch.equal(runs[0].images, runs[2].images)
    assert runs[0].images.shape == (1, 3, 24, 24) and runs[0].images.min() >= 0 and runs[0].images.max() <= 1


def _gram_similarity(model, images, layer="4"):
    captured = {}
    handle = model[int(layer)].register_forward_hook(lambda _m, _a, out: captured.update(out=out))
    with torch.no_grad():
        model(images)
    handle.remove()
    flat = captured["out"].flatten(2)
    gram = torch.nn.functional.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    similarity = gram @ gram.T
    b = len(images)
    return float((similarity.sum() - similarity.diagonal().sum()) / (b * (b - 1)))


def test_a_diversity_term_makes_the_batch_less_alike():
    model = _cnn()
    kwargs = {"size": 24, "steps": 60, "batch": 4, "generator": torch.Generator().manual_seed(0)}
    plain = feature_vis(model, obj.channel("4", 3), **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    diverse = feature_vis(model, obj.channel("4", 3) + 5.0 * obj.diversity("4"), **kwargs)
    assert _gram_similarity(model, diverse.images) < _gram_similarity(model, plain.images) - 0.01


def test_the_model_is_left_as_it_was():
    model = _cnn()
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[8].bias.requires_grad_(False)
    feature_vis(model, obj.class_logit(1) - 0.01 * obj.total_variation(), size=16, steps=5)
    feature_vis(model, "2:1", size=16, steps=5)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")
    assert not model[8].bias.requires_grad and model[8].weight.requires_grad
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_objective_algebra_combines_the_terms():
    acts = {"a": torch.arange(24.0).view(2, 3, 2, 2), OUTPUT: torch.tensor([[1.0, 5.0], [2.0, 3.0]])}
    acts[IMAGE] = torch.zeros(2, 3, 4, 4)
    acts[IMAGE][0, :, :, 2:] = 1.0
    combined = obj.channel("a", [0, 2]) + 2 * obj.class_logit(1) - obj.total_variation() - 1.5
    expected = torch.tensor([1.5 + 10.0 - 1 / 3 - 1.5, 21.5 + 6.0 - 0.0 - 1.5])  # TV: one edge in 3 column steps
    torch.testing.assert_close(combined(acts), expected)
    assert obj.layer("a")(acts)[0] == torch.arange(12.0).square().mean()
    assert torch.allclose(obj.direction("a", [1.0, 0.0, 0.0])(acts), obj.channel("a", 0)(acts))
    assert obj.neuron("a", 1, x=0, y=1)(acts)[1] == acts["a"][1, 1, 1, 0]
    assert "channel [0, 2] of a" in combined.description


@pytest.mark.parametrize(
    ("objective", "kwargs", "error", "message"),
    [
        ("nope:3", {}, LayerNotFoundError, "nope"),
        ("layer three", {}, ValueError, "'layer:channel'"),
        (obj.channel("4", [0, 1, 2]), {"batch": 2}, ValueError, "3 channels for a batch of 2 images"),
        (obj.diversity("4"), {}, ValueError, "batch >= 2"),
        (obj.channel("4", 0), {"param": "voxels"}, ValueError, "unknown parameterisation 'voxels'"),
        (obj.channel("4", 0), {"transforms": "wild"}, ValueError, "unknown transforms 'wild'"),
        (obj.channel("4", 0), {"steps": 0}, ValueError, "steps >= 1"),
    ],
)
def test_bad_requests_are_explained(objective, kwargs, error, message):
    with pytest.raises(error, match=message):
        feature_vis(_cnn(), objective, size=16, steps=kwargs.pop("steps", 2), **kwargs)


def test_the_default_colour_matrix_is_that_of_the_bundled_photographs():
    from deepscope.datasets import PHOTOS, sample_photos

    torch.testing.assert_close(
        color_correlation(sample_photos(PHOTOS, size=224)), torch.tensor(COLOR_CORRELATION), atol=1e-3, rtol=0
    )


def test_transforms_and_parameterisations_follow_the_generator():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = STANDARD(x, torch.Generator().manual_seed(3))
    again = STANDARD(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert jitter(4)(x, torch.Generator()).shape == (2, 3, 28, 28)
    a, b = (Fourier(2, (16, 20), generator=torch.Generator().manual_seed(5))() for _ in range(2))
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 20)


@pytest.mark.parametrize(("factors", "degrees"), [([1.0], [0]), ([1.1], [0]), ([1.0], [10]), ([0.9], [-7])])
def test_the_fused_standard_transform_equals_the_chain(factors, degrees):
    """One resampling for pad, jitter, scale, rotate, jitter: the chain's result (to interpolation when both)."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(coarse, 32, mode="bicubic", align_corners=False)
    fused = random_affine(12, (8, 4), factors, degrees)(smooth, torch.Generator().manual_seed(3))
    chain = compose([pad(12), jitter(8), random_scale(factors), random_rotate(degrees), jitter(4)])
    expected = chain(smooth, torch.Generator().manual_seed(3))
    assert fused.shape == expected.shape
    if factors == [1.0] or degrees == [0]:  # one interpolation in the chain too: the same image
        torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    else:  # the chain interpolates twice
        assert (fused - expected).abs().mean() < 0.01


@pytest.mark.parametrize(("threads", "batch", "height"), [(2, 1, 126), (2, 1, 127), (3, 1, 5), (4, 2, 131), (2, 3, 9)])
def test_banded_resampling_equals_one_grid_sample_forward_and_backward(threads, batch, height):
    """Cutting the output rows into one band per thread (odd heights padded) changes no value and no gradient."""
    gen = torch.Generator().manual_seed(height)
    x = torch.rand(batch, 3, 40, 41, dtype=torch.float64, generator=gen, requires_grad=True)
    grid = torch.rand(height, 37, 2, dtype=torch.float64, generator=gen) * 2.2 - 1.1  # some points outside
    weights = torch.rand(batch, 3, height, 37, dtype=torch.float64, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        banded = _resample(x, grid)
    finally:
        torch.set_num_threads(before)
    plain = torch.nn.functional.grid_sample(x, grid.expand(batch, -1, -1, -1), align_corners=False)
    (grad_banded,) = torch.autograd.grad((banded * weights).sum(), x)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), x)
    assert banded.shape == plain.shape
    torch.testing.assert_close(banded, plain, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_banded, grad_plain, atol=1e-12, rtol=0)


def test_the_redirected_relu_lets_gradient_through_where_it_would_switch_the_unit_on():
    z = torch.tensor([-1.0, -1.0, 2.0], requires_grad=True)
    with relu_rules("redirected"):
        out = torch.relu(z)
    (grad,) = torch.autograd.grad(out, z, torch.tensor([-1.0, 1.0, 1.0]))
    assert grad.tolist() == [-1.0, 0.0, 1.0]  # descending -1 raises z: passes; +1 would lower it: blocked


def test_a_channel_atlas_is_recorded_and_reported(tmp_path):
    model = _cnn()
    atlas = feature_vis_grid(model, "4", [0, 1, 2], per_batch=2, size=16, steps=4)
    assert atlas.images.shape == (3, 3, 16, 16) and atlas.labels == ("channel 0", "channel 1", "channel 2")
    assert atlas.curve.shape == (4, 3)
    record_feature_vis(tmp_path / "fv", {"atlas <b>": atlas}, name="tiny")
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert "Feature visualisation (tiny)" in page and "atlas <b>" not in page
    assert atlas._repr_png_()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("layer", "unit", "objective", "label", "missing"),
    [
        ("4", "neuron", obj.neuron("4", [0, 2]), "neuron", "channel 8 does not exist: '4' has 8 channels"),
        (OUTPUT, "channel", obj.class_logit([0, 2]), "class", "class 8 does not exist: the model output has 3"),
    ],
)
def test_an_atlas_of_neurons_or_classes_is_that_objective_batched(layer, unit, objective, label, missing):
    model = _cnn()
    atlas = feature_vis_grid(model, layer, [0, 2], unit=unit, size=16, steps=3)
    alone = feature_vis(model, objective, batch=2, size=16, steps=3)
    assert torch.equal(atlas.images, alone.images) and atlas.labels == (f"{label} 0", f"{label} 2")
    with pytest.raises(ValueError, match=missing):
        feature_vis_grid(model, layer, [8], unit=unit, size=16, steps=1)
