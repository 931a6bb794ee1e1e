"""Occlusion and RISE: captum agreement, axioms on linear and constant models, seeding, extras, errors."""

import copy

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from _model_state import assert_unchanged, fingerprint
from deepscope.attribution import explain
from deepscope.attribution.perturbation import RISE, rise_masks


class Linear(nn.Module):
    """f(x) = W · vec(x) + b: every occlusion drop is w · (x − baseline) over the patch."""

    def __init__(self, shape, classes, generator):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, *shape, generator=generator))
        self.bias = nn.Parameter(torch.randn(classes, generator=generator))

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


class Constant(nn.Module):
    """Ignores its input."""

    def __init__(self, generator):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(5, generator=generator))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0 * x.sum()


@pytest.fixture
def images(generator):
    return torch.randn(2, 3, 32, 32, generator=generator)


# --------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize(
    ("window", "stride", "baseline"),
    [(8, 4, 0.0), (10, 4, 0.5), (7, 7, -1.0), ((6, 9), (3, 5), 0.0)],
    ids=["overlap", "clipped-last-window", "tiles", "rectangular"],
)
def test_occlusion_equals_captum(tiny_cnn, images, window, stride, baseline):
    result = explain(tiny_cnn, images, "occlusion", target=[3, 5], window=window, stride=stride, baseline=baseline)
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    reference = CaptumOcclusion(copy.deepcopy(tiny_cnn).eval()).attribute(
        images,
        sliding_window_shapes=(3, wh, ww),
        strides=(1, sh, sw),
        baselines=baseline,
        target=[3, 5],
        perturbations_per_eval=64,
    )
    assert result.maps.shape == (2, 32, 32)
    torch.testing.assert_close(result.maps, reference[:, 0], rtol=1e-5, atol=1e-6)


def test_occlusion_predicted_class_is_fixed_on_the_clean_image(tiny_cnn, images):
    predicted = tiny_cnn.eval()(images).argmax(1).tolist()
    result = explain(tiny_cnn, images, "occlusion", window=8, stride=8, batch_size=5)
    reference = CaptumOcclusion(copy.deepcopy(tiny_cnn)).attribute(
        images, sliding_window_shapes=(3, 8, 8), strides=(1, 8, 8), target=predicted, perturbations_per_eval=64
    )
    assert result.target == predicted
    torch.testing.assert_close(result.maps, reference[:, 0], rtol=1e-5, atol=1e-6)


def test_occlusion_on_a_linear_model_drops_by_w_dot_x_minus_baseline(generator):
    x = torch.randn(2, 3, 12, 12, generator=generator)
    model = Linear((3, 12, 12), 4, generator)
    result = explain(model, x, "occlusion", target=[1, 2], window=4, stride=2, baseline=0.25)
    contribution = torch.einsum("nchw,nchw->nhw", x - 0.25, model.weight.detach()[[1, 2]])  # (N, H, W)
    drops = result.scores[:, None, None] - result.extras["score"]  # (N, gh, gw)
    assert drops.shape == (2, 5, 5)
    for i in range(5):
        for j in range(5):
            expected = contribution[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4].sum(dim=(1, 2))
            torch.testing.assert_close(drops[:, i, j], expected, rtol=1e-4, atol=1e-4)
    # Non-overlapping tiles: every pixel of a tile carries that tile's drop.
    tiles = explain(model, x, "occlusion", target=[1, 2], window=4, stride=4, baseline=0.25).maps
    per_tile = contribution.unflatten(1, (3, 4)).unflatten(3, (3, 4)).sum(dim=(2, 4))  # (N, 3, 3)
    expected = per_tile.repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(tiles, expected, rtol=1e-4, atol=1e-4)


def test_occlusion_mean_and_tensor_baselines(generator):
    x = torch.randn(1, 3, 8, 8, generator=generator)
    model = Linear((3, 8, 8), 2, generator)
    mean = explain(model, x, "occlusion", target=0, window=8, stride=8, baseline="mean").maps
    expected = ((x - x.mean(dim=(2, 3), keepdim=True)) * model.weight.detach()[0]).sum()
    torch.testing.assert_close(mean, expected.expand(1, 8, 8), rtol=1e-4, atol=1e-4)
    fill = torch.tensor([0.1, 0.2, 0.3])[:, None, None]
    tensor = explain(model, x, "occlusion", target=0, window=8, stride=8, baseline=fill).maps
    torch.testing.assert_close(tensor, ((x - fill) * model.weight.detach()[0]).sum().expand(1, 8, 8))


def test_occlusion_batch_size_does_not_change_the_maps(tiny_cnn, images):
    one = explain(tiny_cnn, images, "occlusion", window=16, stride=8, batch_size=4)  # chunks span both images
    many = explain(tiny_cnn, images, "occlusion", window=16, stride=8, batch_size=1000)
    torch.testing.assert_close(one.maps, many.maps)


def test_occlusion_probability_score(tiny_cnn, images):
    result = explain(tiny_cnn, images, "occlusion", target=[3, 5], window=16, stride=16, score="probability")
    model = tiny_cnn.eval()
    occluded = images.clone()
    occluded[:, :, :16, 16:] = 0  # position (0, 1)
    with torch.no_grad():
        p_clean = model(images).softmax(1)[[0, 1], [3, 5]]
        p_occluded = model(occluded).softmax(1)[[0, 1], [3, 5]]
    torch.testing.assert_close(result.extras["score"][:, 0, 1], p_occluded)
    torch.testing.assert_close(result.maps[:, 0, 20], p_clean - p_occluded)


def test_occlusion_fig7_panels(tiny_cnn, images):
    """Most probable class and total activation of a feature map, per position (Zeiler & Fergus Fig. 7)."""
    model = tiny_cnn.eval()
    before = fingerprint(model)
    result = explain(
        model, images, "occlusion", window=16, stride=8, extras=("top_class",), activation_layer="features.4"
    )
    assert_unchanged(before, fingerprint(model))
    assert result.extras["top_class"].shape == result.extras["activation"].shape == (2, 3, 3)
    captured = {}
    handle = model.features[4].register_forward_hook(lambda m, a, o: captured.update(out=o.detach()))
    try:
        with torch.no_grad():
            model(images)
            strongest = captured["out"].sum(dim=(2, 3)).argmax(1)  # (N,)
            occluded = images.clone()
            occluded[:, :, 8:24, 16:32] = 0  # position (1, 2)
            logits = model(occluded)
            totals = captured["out"].sum(dim=(2, 3))  # (N, C)
    finally:
        handle.remove()
    assert torch.equal(result.extras["activation_channel"], strongest)
    assert torch.equal(result.extras["top_class"][:, 1, 2], logits.argmax(1))
    torch.testing.assert_close(result.extras["activation"][:, 1, 2], totals[[0, 1], strongest])
    fixed = explain(model, images, "occlusion", window=16, stride=8, extras="activation", activation_layer="features.4",
                    activation_channel=3)  # fmt: skip
    torch.testing.assert_close(fixed.extras["activation"][:, 1, 2], totals[:, 3])


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"window": 4, "stride": 8}, ValueError, "must not exceed window"),
        ({"window": 64}, ValueError, "larger than the images"),
        ({"window": 0}, ValueError, "positive"),
        ({"window": 2.5}, TypeError, "int or a pair"),
        ({"extras": ("heatmap",)}, ValueError, "unknown occlusion extras"),
        ({"extras": ("activation",)}, ValueError, "needs activation_layer"),
        ({"activation_layer": "features.4", "activation_channel": 99}, ValueError, "out of range"),
        ({"activation_layer": "feature.4"}, KeyError, "(?i)closest valid names"),
        ({"baseline": "median"}, ValueError, "'mean'"),
        ({"baseline": torch.zeros(5)}, ValueError, "broadcast"),
        ({"score": "softmax"}, ValueError, "'logit' or 'probability'"),
    ],
)
def test_occlusion_rejects_bad_parameters(tiny_cnn, images, params, error, match):
    with pytest.raises(error, match=match):
        explain(tiny_cnn, images, "occlusion", **params)
    assert all(not m._forward_hooks for m in tiny_cnn.modules())


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_perturbation_methods_need_images(demo_mlp, method):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        explain(demo_mlp, torch.zeros(4, 2), method)


# --------------------------------------------------------------------------- RISE


def test_rise_masks_follow_the_paper(generator):
    method = RISE(n_masks=500, cell=4, p=0.25, generator=generator)
    grids, shifts = method.draw((30, 30))
    assert grids.shape == (500, 4, 4) and shifts.shape == (500, 2)
    assert int(shifts.min()) >= 0 and int(shifts.max()) < 8  # shifts within one cell of ⌈30/4⌉ = 8 px
    masks = rise_masks(grids, shifts, (30, 30))
    assert masks.shape == (500, 30, 30) and masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.25) < 0.03
    torch.testing.assert_close(rise_masks(torch.ones(2, 4, 4), shifts[:2], (30, 30)), torch.ones(2, 30, 30))
    # A single kept cell, no shift: a bilinear bump centred on that cell, upsampled to 5 · 8 / 4 = 10 px.
    single = torch.zeros(1, 4, 4)
    single[0, 1, 2] = 1
    bump = rise_masks(single, torch.zeros(1, 2, dtype=torch.long), (30, 30))[0]
    peak = divmod(int(bump.argmax()), 30)
    assert peak in [(14, 24), (14, 25), (15, 24), (15, 25)]


def test_rise_on_a_constant_model_is_flat(generator):
    model = Constant(generator)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    coverage = explain(model, x, "rise", n_masks=64, cell=4, normalize="coverage", generator=generator)
    probability = model.logits.detach().softmax(0).max()
    torch.testing.assert_close(coverage.maps, probability.expand(2, 16, 16))
    # The paper's normalisation divides by n·p instead of Σ M_i: flat up to the masks' sampling noise.
    expected = explain(model, x, "rise", n_masks=64, cell=4, generator=torch.Generator().manual_seed(3))
    grids, shifts = RISE(n_masks=64, cell=4, generator=torch.Generator().manual_seed(3)).draw((16, 16))
    density = rise_masks(grids, shifts, (16, 16)).sum(0) / (64 * 0.5)  # (H, W)
    torch.testing.assert_close(expected.maps, probability * density.expand(2, 16, 16))


def test_rise_finds_the_region_the_model_reads(generator):
    """f = sum of the top-left quadrant: pixels there get the larger conditional expected score."""
    x = torch.rand(1, 3, 16, 16, generator=generator) + 0.5
    weight = torch.zeros(1, 3, 16, 16)
    weight[..., :8, :8] = 1.0
    model = Linear((3, 16, 16), 1, generator)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.zero_()
    maps = explain(model, x, "rise", n_masks=400, cell=4, score="logit", generator=generator).maps[0]
    assert maps[:8, :8].mean() > 1.1 * maps[8:, 8:].mean()


def test_rise_is_seeded_and_leaves_the_global_rng_alone(tiny_cnn, images):
    state = torch.get_rng_state()
    first = explain(tiny_cnn, images, "rise", n_masks=40, cell=3, generator=torch.Generator().manual_seed(7))
    again = explain(
        tiny_cnn, images, "rise", n_masks=40, cell=3, batch_size=7, generator=torch.Generator().manual_seed(7)
    )
    other = explain(tiny_cnn, images, "rise", n_masks=40, cell=3, generator=torch.Generator().manual_seed(8))
    unseeded = explain(tiny_cnn, images, "rise", n_masks=40, cell=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first.maps, again.maps)  # batch_size does not change the draws
    assert not torch.allclose(first.maps, other.maps)
    assert unseeded.maps.shape == (2, 32, 32) and torch.isfinite(unseeded.maps).all()


def test_rise_per_sample_targets_and_batches(tiny_cnn, images):
    """Each image is scored for its own class whatever the batching (here 2 images, 3 masks per forward)."""
    together = explain(tiny_cnn, images, "rise", target=[1, 7], n_masks=9, batch_size=6,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    alone = explain(tiny_cnn, images[1:], "rise", target=7, n_masks=9, batch_size=1,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(together.maps[1:], alone.maps)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"p": 0.0}, "p "), ({"n_masks": 0}, "n_masks"), ({"cell": -1}, "cell"), ({"normalize": "max"}, "normalize")],
)
def test_rise_rejects_bad_parameters(tiny_cnn, images, params, match):
    with pytest.raises(ValueError, match=match):
        explain(tiny_cnn, images, "rise", **params)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_perturbation_methods_on_cuda_match_cpu(tiny_cnn, images, method):
    params = {"window": 8, "stride": 4} if method == "occlusion" else {"n_masks": 32}
    cpu = explain(tiny_cnn, images, method, **params, **_generator(method))
    gpu = explain(copy.deepcopy(tiny_cnn).cuda(), images, method, **params, **_generator(method))
    assert gpu.maps.device.type == "cuda"
    torch.testing.assert_close(gpu.maps.cpu(), cpu.maps, rtol=1e-3, atol=1e-4)


def _generator(method):
    return {"generator": torch.Generator().manual_seed(0)} if method == "rise" else {}
