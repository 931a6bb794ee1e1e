"""Gradient family: saliency, input × gradient, Integrated Gradients and the SmoothGrad wrappers.

References: captum (Saliency, InputXGradient, IntegratedGradients with the same steps and rule)
on torchvision networks; IG's completeness axiom on a smooth float64 network; closed forms on a
linear model for SmoothGrad, SmoothGrad² and VarGrad.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torchvision import models

from _zoo import randomize_batchnorm, slim_vgg11_bn
from deepscope.attribution import ATTRIBUTIONS, explain
from deepscope.attribution._filters import gaussian_blur
from deepscope.attribution.gradient import quadrature
from deepscope.attribution.smoothgrad import SmoothGrad, smooth

captum_attr = pytest.importorskip("captum.attr")

RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre"]
CAPTUM_RULES = {rule: rule for rule in RULES} | {"gauss_legendre": "gausslegendre"}
TARGET = [3, 7]


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        built = {"resnet18": models.resnet18(weights=None), "vgg11_bn": slim_vgg11_bn()}
    return {name: randomize_batchnorm(model, torch.Generator().manual_seed(1)).eval() for name, model in built.items()}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


class _SmoothNet(nn.Module):
    """A small analytic CNN (softplus, tanh), float64: IG's integrand is smooth along the path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def smooth_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return _SmoothNet().double().eval()


@pytest.fixture(scope="module")
def smooth_images() -> torch.Tensor:
    return 3 * torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def _captum(name: str, model: nn.Module, inputs: torch.Tensor, **kwargs) -> torch.Tensor:
    method = getattr(captum_attr, name)(copy.deepcopy(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method.attribute(inputs.clone(), **kwargs).detach()


def _assert_agrees(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    assert _pearson(ours, reference) >= 0.999
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


# --------------------------------------------------------------------------- captum agreement


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
def test_saliency_and_input_x_gradient_match_captum(zoo, images, arch):
    model = zoo[arch]
    _assert_agrees(
        explain(model, images, "saliency", target=TARGET).maps,
        _captum("Saliency", model, images, target=TARGET, abs=True),
    )
    _assert_agrees(
        explain(model, images, "input_x_gradient", target=TARGET).maps,
        _captum("InputXGradient", model, images, target=TARGET),
    )


@pytest.mark.parametrize(("arch", "rule"), [("resnet18", rule) for rule in RULES] + [("vgg11_bn", "gauss_legendre")])
def test_integrated_gradients_match_captum(zoo, images, arch, rule):
    """Same steps and rule as captum; captum's trapezoid weights sum to (n − 1)/n instead of 1, ours to 1."""
    model, n = zoo[arch], 6
    baseline = 0.5 * torch.ones_like(images)
    result = explain(model, images, "integrated_gradients", target=TARGET, n_steps=n, rule=rule, baseline=baseline)
    reference = _captum(
        "IntegratedGradients", model, images, target=TARGET, baselines=baseline, n_steps=n, method=CAPTUM_RULES[rule]
    )
    if rule == "riemann_trapezoid":
        reference = reference * n / (n - 1)
    _assert_agrees(result.maps, reference)
    assert result.extras["n_steps"] == [n, n]


# --------------------------------------------------------------------------- Integrated Gradients


def test_quadrature_rules_integrate_a_constant_and_their_degree():
    for rule in RULES:
        for n in (2, 5):
            alphas, weights = quadrature(rule, n)
            assert alphas.min() >= 0 and alphas.max() <= 1
            torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    alphas, weights = quadrature("gauss_legendre", 3)  # exact up to degree 5
    torch.testing.assert_close((weights * alphas**5).sum(), torch.tensor(1 / 6, dtype=torch.float64))


def test_completeness_error_falls_with_steps_for_every_rule(smooth_net, smooth_images):
    """|Σ IG − (f(x) − f(x'))| decreases with n for every rule; Gauss–Legendre converges fastest."""
    errors = {}
    for rule in RULES:
        errors[rule] = [
            explain(smooth_net, smooth_images, "integrated_gradients", n_steps=n, rule=rule).extras["delta"].abs().max()
            for n in (4, 8, 16)
        ]
        assert errors[rule][0] > errors[rule][1] > errors[rule][2], (rule, errors[rule])
    assert errors["gauss_legendre"][2] < 1e-9
    # Gauss–Legendre with 4 steps beats every other rule with 16
    assert all(errors["gauss_legendre"][0] < errors[rule][2] for rule in RULES if rule != "gauss_legendre")


def test_completeness_holds_for_every_baseline(smooth_net, smooth_images):
    x = smooth_images
    for baseline in ("zeros", "blur", "uniform", 0.25, torch.full((1, 3, 1, 1), -0.5, dtype=torch.float64)):
        result = explain(
            smooth_net, x, "integrated_gradients", n_steps=16, baseline=baseline, generator=torch.Generator()
        )
        gap = result.maps.flatten(1).sum(1).double() - result.extras["delta"].double()  # = f(x) − f(x')
        assert (result.extras["delta"].abs() <= 1e-6 * gap.abs().clamp_min(1e-3)).all(), baseline


def test_baselines(smooth_net, smooth_images):
    """Blur is the blurred input, uniform noise stays in each sample's range and follows its generator."""
    x = smooth_images
    ig = ATTRIBUTIONS.get("integrated_gradients")
    blurred = ig(baseline="blur", blur_sigma=2.0)._baseline(x)
    torch.testing.assert_close(blurred, gaussian_blur(x, 2.0))
    assert blurred.std() < x.std()
    torch.testing.assert_close(gaussian_blur(torch.ones(1, 2, 5, 5), 3.0), torch.ones(1, 2, 5, 5))
    uniform = ig(baseline="uniform", generator=torch.Generator().manual_seed(0))._baseline(x)
    again = ig(baseline="uniform", generator=torch.Generator().manual_seed(0))._baseline(x)
    other = ig(baseline="uniform", generator=torch.Generator().manual_seed(1))._baseline(x)
    assert torch.equal(uniform, again) and not torch.equal(uniform, other)
    low, high = x.flatten(1).amin(1), x.flatten(1).amax(1)
    assert (uniform.flatten(1).amin(1) >= low).all() and (uniform.flatten(1).amax(1) <= high).all()
    # IG from the input itself is zero everywhere
    same = explain(smooth_net, x, "integrated_gradients", n_steps=4, baseline=x)
    assert same.maps.abs().max() == 0 and same.extras["delta"].abs().max() == 0
    with pytest.raises(ValueError, match="does not broadcast"):
        explain(smooth_net, x, "integrated_gradients", baseline=torch.zeros(5))
    with pytest.raises(ValueError, match="unknown baseline"):
        explain(smooth_net, x, "integrated_gradients", baseline="black")


def test_auto_steps_meet_the_tolerance(smooth_net, smooth_images):
    for rule, tolerance in (("riemann_middle", 1e-3), ("riemann_trapezoid", 1e-4)):
        result = explain(
            smooth_net, smooth_images, "integrated_gradients", n_steps="auto", rule=rule, tolerance=tolerance
        )
        gap = result.maps.flatten(1).sum(1).double() - result.extras["delta"].double()
        assert (result.extras["delta"].abs() <= tolerance * gap.abs()).all()
        used = result.extras["n_steps"]
        assert all(n in (16, 32, 64, 128, 256, 512) for n in used) and max(used) > 16, used
        fixed = explain(smooth_net, smooth_images, "integrated_gradients", n_steps=max(used), rule=rule)
        worst = used.index(max(used))
        torch.testing.assert_close(result.maps[worst], fixed.maps[worst].float())


def test_auto_steps_warn_when_max_steps_is_not_enough(smooth_net, smooth_images):
    with pytest.warns(UserWarning, match="completeness error above"):
        result = explain(
            smooth_net, smooth_images, "integrated_gradients", n_steps="auto", rule="riemann_left", max_steps=32
        )
    assert max(result.extras["n_steps"]) == 32


def test_batch_size_does_not_change_the_result(smooth_net, smooth_images):
    x = torch.cat([smooth_images, -smooth_images[:1]])  # N = 3
    results = [
        explain(smooth_net, x, "integrated_gradients", n_steps=5, batch_size=b, target=[0, 1, 4]).maps
        for b in (1, 2, 7, 64)  # one point at a time, part of the samples, whole steps, everything at once
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0])


def test_targets_per_sample_and_predicted_class_fixed_at_the_input(smooth_net, smooth_images):
    x = smooth_images
    both = explain(smooth_net, x, "integrated_gradients", n_steps=8, target=[1, 4]).maps
    for i, cls in enumerate([1, 4]):
        alone = explain(smooth_net, x[i : i + 1], "integrated_gradients", n_steps=8, target=cls).maps
        torch.testing.assert_close(both[i : i + 1], alone)
    predicted = smooth_net(x).argmax(1).tolist()
    default = explain(smooth_net, x, "integrated_gradients", n_steps=8)
    assert default.target == predicted
    torch.testing.assert_close(
        default.maps, explain(smooth_net, x, "integrated_gradients", n_steps=8, target=predicted).maps
    )
    custom = explain(smooth_net, x, "integrated_gradients", n_steps=8, target=lambda out: out[:, 1]).maps
    torch.testing.assert_close(custom[:1], both[:1])
    with pytest.raises(ValueError, match="score each sample on its own"):
        explain(smooth_net, x, "integrated_gradients", n_steps=8, target=lambda out: out[:2, 1])


def test_vector_inputs(demo_mlp, generator):
    x = torch.randn(5, 2, generator=generator)
    for method in ("input_x_gradient", "integrated_gradients"):
        assert explain(demo_mlp, x, method, target=0).maps.shape == (5, 2)
    with pytest.raises(ValueError, match="needs images"):
        explain(demo_mlp, x, "integrated_gradients", baseline="blur", target=0)


@pytest.mark.parametrize(
    "params",
    [
        {"n_steps": 0},
        {"n_steps": "many"},
        {"rule": "simpson"},
        {"batch_size": 0},
        {"rule": "riemann_trapezoid", "n_steps": 1},
    ],
)
def test_integrated_gradients_rejects_bad_parameters(tiny_cnn, tiny_images, params):
    with pytest.raises(ValueError):
        explain(tiny_cnn, tiny_images, "integrated_gradients", **params)


# --------------------------------------------------------------------------- SmoothGrad


@pytest.mark.parametrize(
    ("method", "params"), [("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 4})]
)
def test_smoothgrad_without_noise_is_the_wrapped_method(tiny_cnn, tiny_images, method, params):
    """Bit-exact for single-pass methods. For IG the copies sit in other rows of differently shaped
    batches, whose CPU kernels round differently: equal to float32 rounding."""
    plain = explain(tiny_cnn, tiny_images, method, target=[1, 2], **params).maps
    tolerance = {"rtol": 1e-5, "atol": 1e-7} if method == "integrated_gradients" else {"rtol": 0, "atol": 0}
    for noise, expected in (("smoothgrad", plain), ("smoothgrad_sq", plain.square()), ("vargrad", 0 * plain)):
        wrapped = smooth(method, noise=noise, sigma=0.0, n_samples=5, batch_size=4, **params)
        maps = explain(tiny_cnn, tiny_images, wrapped, target=[1, 2]).maps
        torch.testing.assert_close(maps, expected, **tolerance)
        if noise == "vargrad" and method != "integrated_gradients":
            assert maps.abs().max() == 0


def _linear_model(generator: torch.Generator, features: int = 200) -> tuple[nn.Module, torch.Tensor]:
    model = nn.Linear(features, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, features, generator=generator))
    return model.double(), model.weight.detach()[0].double()


def test_smoothgrad_variants_follow_their_closed_forms_on_a_linear_model(generator):
    """Input × gradient of f = w·x: M(x + ε) = w ⊙ (x + ε), so with σ = sigma · (max x − min x)
    SmoothGrad → w ⊙ x, SmoothGrad² → w² ⊙ (x² + σ²) and VarGrad → w² σ²."""
    model, w = _linear_model(generator)
    x = torch.rand(2, 200, generator=generator, dtype=torch.float64) * 4 - 1
    x[1] *= 3  # another range, another absolute sigma
    sigma = 0.2 * (x.amax(1) - x.amin(1))[:, None]  # (2, 1)
    n = 2000

    def run(noise: str) -> torch.Tensor:
        method = smooth("input_x_gradient", noise=noise, sigma=0.2, n_samples=n, batch_size=512, generator=generator)
        return explain(model, x, method, target=0).maps.double()

    mean, squares, variance = run("smoothgrad"), run("smoothgrad_sq"), run("vargrad")
    scale = 5 / n**0.5  # ~5 standard errors
    assert ((mean / w - x) / sigma).abs().mean() < scale
    assert ((variance / w**2) / sigma**2).mean(1).sub(1).abs().max() < scale
    assert ((squares / w**2 - x**2) / sigma**2).mean(1).sub(1).abs().max() < 2 * scale


def test_smoothgrad_sq_and_vargrad_are_moments_of_the_same_noisy_maps(tiny_cnn, tiny_images):
    def run(noise: str) -> torch.Tensor:
        method = smooth("saliency", noise=noise, n_samples=7, batch_size=3, generator=torch.Generator().manual_seed(5))
        return explain(tiny_cnn, tiny_images, method, target=[1, 2]).maps

    mean, squares, variance = run("smoothgrad"), run("smoothgrad_sq"), run("vargrad")
    assert (variance >= 0).all() and (variance > 0).any()
    torch.testing.assert_close(squares, variance + mean.square())


def test_smoothgrad_randomness(tiny_cnn, tiny_images):
    """Seeded generator: reproducible; another seed: another map; the global RNG is never touched."""

    def run(seed: int | None, method: str = "saliency", **params) -> torch.Tensor:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return explain(tiny_cnn, tiny_images, smooth(method, n_samples=4, generator=generator, **params)).maps

    state = torch.get_rng_state()
    first, again, other = run(0), run(0), run(1)
    unseeded = run(None)
    uniform_ig = run(0, "integrated_gradients", n_steps=4, baseline="uniform")
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, unseeded)
    assert torch.equal(uniform_ig, run(0, "integrated_gradients", n_steps=4, baseline="uniform"))
    assert torch.equal(torch.get_rng_state(), state)


def test_smoothgrad_wraps_any_input_space_method(tiny_cnn, tiny_images):
    for method in ("guided_backprop", "deconvnet", "integrated_gradients"):
        result = explain(tiny_cnn, tiny_images, smooth(method, n_samples=3, generator=torch.Generator()))
        assert result.method == "smoothgrad" and result.params["base"] == method
        assert result.maps.shape == tiny_images.shape and torch.isfinite(result.maps).all()
    by_key = explain(tiny_cnn, tiny_images, "smoothgrad", n_samples=3, generator=torch.Generator().manual_seed(0))
    by_instance = explain(tiny_cnn, tiny_images, SmoothGrad(n_samples=3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(by_key.maps, by_instance.maps)
    assert by_key.extras["sigma"].shape == (2,)
    wrapped = explain(tiny_cnn, tiny_images, "smoothgrad", base="integrated_gradients", base_params={"n_steps": 3},
                      n_samples=2, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert wrapped.params["base"] == "integrated_gradients" and wrapped.params["base_params"] == {"n_steps": 3}


def test_smoothgrad_rejects_bad_parameters():
    with pytest.raises(ValueError, match="unknown noise"):
        smooth("saliency", noise="gaussian")
    with pytest.raises(TypeError, match="has no parameter"):
        smooth("saliency", n_steps=4)
    with pytest.raises(ValueError, match="sigma"):
        smooth("saliency", sigma=-0.1)
    with pytest.raises(ValueError, match="n_samples"):
        smooth("saliency", n_samples=0)
    layer_methods = [name for name in ATTRIBUTIONS.names() if ATTRIBUTIONS.get(name).needs_layer]
    for name in layer_methods[:1]:
        with pytest.raises(ValueError, match="input-space"):
            smooth(name)


# --------------------------------------------------------------------------- model state


@pytest.mark.parametrize(
    "method",
    ["input_x_gradient", "integrated_gradients", smooth("integrated_gradients", n_samples=2, n_steps=3)],
    ids=["input_x_gradient", "integrated_gradients", "smooth_ig"],
)
def test_no_grad_frozen_parameters_and_state(tiny_cnn, tiny_images, method):
    expected = explain(tiny_cnn, tiny_images, method, target=1).maps if isinstance(method, str) else None
    model = copy.deepcopy(tiny_cnn).train().requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        result = explain(model, tiny_images, method, target=1)
        assert not torch.is_grad_enabled()
    if expected is not None:
        torch.testing.assert_close(result.maps, expected, rtol=0, atol=0)
    assert model.training and all(m.training for m in model.modules())
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
