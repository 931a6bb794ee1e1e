"""Backward rules on ReLU: Guided Backprop and DeconvNet as plain gradients under a TorchFunctionMode.

References: the rule definitions on hand-computed toys; captum's ``GuidedBackprop`` and
``Deconvolution`` (which hook ``nn.ReLU`` modules) on torchvision architectures; and, for models
written with functional ReLUs, captum on the ``nn.ReLU`` twin of the same network (captum itself
silently falls back to the plain gradient there).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from _zoo import randomize_batchnorm, slim_vgg11_bn
from deepscope.attribution import explain
from deepscope.attribution.backprop_rules import RULES, relu_rules

captum_attr = pytest.importorskip("captum.attr")

KINDS = {"guided_backprop": "GuidedBackprop", "deconvnet": "Deconvolution"}
IMAGE = (2, 3, 64, 64)
TARGET = [3, 7]


class _DenseNetModuleReLU(nn.Module):
    """torchvision's DenseNet with its final functional ``F.relu`` done by an ``nn.ReLU`` module (same weights)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.relu = nn.ReLU(inplace=True)
        self.classifier = net.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


BUILDERS = {
    "resnet18": lambda: models.resnet18(weights=None),
    "vgg11_bn": lambda: slim_vgg11_bn(),
    "mobilenet_v3_small": lambda: models.mobilenet_v3_small(weights=None),
    "densenet121": lambda: _DenseNetModuleReLU(models.densenet121(weights=None)),
}


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    built = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, build in BUILDERS.items():
            built[name] = randomize_batchnorm(build(), torch.Generator().manual_seed(1)).eval()
    return built


@pytest.fixture(scope="module")
def densenet_original(zoo) -> nn.Module:
    """torchvision's own DenseNet module (functional final ReLU) holding the twin's layers."""
    with torch.random.fork_rng(devices=[]):
        original = models.densenet121(weights=None).eval()
    original.features, original.classifier = zoo["densenet121"].features, zoo["densenet121"].classifier
    return original


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(IMAGE, generator=torch.Generator().manual_seed(2))


def _captum(kind: str, model: nn.Module, inputs: torch.Tensor, target: list[int]) -> torch.Tensor:
    method = getattr(captum_attr, KINDS[kind])(copy.deepcopy(model))  # captum hooks the model: use a copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method.attribute(inputs.clone(), target=target).detach()


def _plain_grads(model: nn.Module, inputs: torch.Tensor, target: list[int]) -> torch.Tensor:
    return explain(model, inputs, "saliency", target=target, absolute=False).maps


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Differ by more than 1 % of the largest magnitude (maps of random networks can be tiny)."""
    return bool((a - b).abs().max() > 1e-2 * b.abs().max())


# --------------------------------------------------------------------------- definitions on toys


def test_rules_follow_their_definitions_on_a_one_relu_network(generator):
    """f = w2 · relu(W1 x): gradient 1[z>0]·R, deconvnet 1[R>0]·R, guided 1[z>0]·1[R>0]·R with R = w2."""
    first, second = nn.Linear(6, 5, bias=False), nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.randn(5, 6, generator=generator))
        second.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, -0.5, 3.0]]))
    model = nn.Sequential(first, nn.ReLU(), second)
    x = torch.randn(4, 6, generator=generator)
    z = x @ first.weight.T  # (4, 5)
    relevance = second.weight[0].expand_as(z)  # (4, 5): R at the ReLU output
    assert (relevance > 0).any() and (relevance < 0).any() and (z > 0).any() and (z < 0).any()
    expected = {
        "gradient": (z > 0) * relevance,
        "deconvnet": (relevance > 0) * relevance,
        "guided": (z > 0) * (relevance > 0) * relevance,
    }
    for rule, signal in expected.items():
        xx = x.clone().requires_grad_()
        with relu_rules(rule):
            (grads,) = torch.autograd.grad(model(xx).sum(), xx)
        torch.testing.assert_close(grads, signal @ first.weight, msg=rule)


def test_maxpool_routes_to_the_argmax_switches(generator):
    """DeconvNet through a max-pool puts the signal only where each window's maximum was."""
    head = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        head.weight.fill_(1.0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), head)
    x = torch.randn(1, 1, 4, 4, generator=generator)
    maps = explain(model, x, "deconvnet", target=0).maps[0, 0]  # (4, 4)
    windows = x[0, 0].unfold(0, 2, 2).unfold(1, 2, 2).reshape(2, 2, 4)
    switches = F.one_hot(windows.argmax(-1), 4).reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)
    torch.testing.assert_close(maps, switches.float())


def test_gradient_rule_is_the_true_gradient(functional_pair):
    functional, _ = functional_pair
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    x = images.clone().requires_grad_()
    with relu_rules("gradient"):
        (ruled,) = torch.autograd.grad(functional(x)[:, 3].sum(), x)
    torch.testing.assert_close(ruled, _plain_grads(functional, images, 3), rtol=0, atol=0)


# --------------------------------------------------------------------------- captum on torchvision models


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "mobilenet_v3_small"])
def test_matches_captum_on_torchvision_models(zoo, images, arch, kind):
    """Identical to captum on networks whose ReLUs are all nn.ReLU modules (in-place ones included).

    mobilenet_v3_small also has Hardswish / Hardsigmoid: neither captum (which hooks nn.ReLU only)
    nor deepscope (which maps ReLU calls only) changes their gradient, so the maps still agree.
    densenet121 has a functional ReLU: see the next test.
    """
    model = zoo[arch]
    ours = explain(model, images, kind, target=TARGET).maps
    reference = _captum(kind, model, images, TARGET)
    assert ours.shape == reference.shape == images.shape
    assert reference.abs().max() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))
    assert _differ(ours, _plain_grads(model, images, TARGET))  # the rule did something


@pytest.mark.parametrize("kind", list(KINDS))
def test_densenet_functional_final_relu_is_covered(zoo, densenet_original, images, kind):
    """torchvision's DenseNet ends with ``F.relu(features, inplace=True)``, which captum cannot see.

    Ours on the original network equals captum's answer on its nn.ReLU twin (same layers, the
    final ReLU as a module); captum on the original misses that one ReLU and gives another map.
    """
    twin, original = zoo["densenet121"], densenet_original
    ours = explain(original, images, kind, target=TARGET).maps
    reference = _captum(kind, twin, images, TARGET)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))
    assert _differ(_captum(kind, original, images, TARGET), ours)


# --------------------------------------------------------------------------- functional ReLUs


class _FunctionalNet(nn.Module):
    """Every spelling of a ReLU, in-place ones included; ``modules=True`` builds the nn.ReLU twin."""

    def __init__(self, modules: bool) -> None:
        super().__init__()
        self.modules_ = modules
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1) for i in range(7))
        self.relus = nn.ModuleList(nn.ReLU(inplace=i % 2 == 0) for i in range(7))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spellings = [
            lambda t: F.relu(t),
            lambda t: F.relu(t, inplace=True),
            lambda t: torch.relu(t),
            lambda t: t.relu(),
            lambda t: t.relu_(),
            lambda t: t.clamp(min=0),
            lambda t: torch.clamp_min(t, 0.0),
        ]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = self.relus[i](x) if self.modules_ else spellings[i](x)
            if i in (1, 4):
                x = self.pool(x)
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def functional_pair() -> tuple[nn.Module, nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        functional = _FunctionalNet(modules=False).eval()
    twin = _FunctionalNet(modules=True).eval()
    twin.load_state_dict(functional.state_dict())
    return functional, twin


@pytest.mark.parametrize("kind", list(KINDS))
def test_functional_relus_follow_the_definition(functional_pair, kind):
    functional, twin = functional_pair
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ours = explain(functional, x, kind, target=TARGET).maps
    reference = _captum(kind, twin, x, TARGET)  # captum is right on the nn.ReLU twin
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))
    torch.testing.assert_close(ours, explain(twin, x, kind, target=TARGET).maps, rtol=0, atol=0)
    # captum on the functional model sees no ReLU module: it silently returns the plain gradient
    captum_functional = _captum(kind, functional, x, TARGET)
    torch.testing.assert_close(captum_functional, _plain_grads(functional, x, TARGET))
    assert _differ(captum_functional, ours)


def test_forward_values_are_unchanged(functional_pair):
    """The rules change the backward only: scores under the rule equal the plain forward, in-place ReLUs too."""
    functional, _ = functional_pair
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = functional(x)
    for rule in RULES:
        xx = x.clone().requires_grad_()
        with relu_rules(rule):
            out = functional(xx)
        torch.testing.assert_close(out, plain, rtol=0, atol=0)


def test_clamps_that_are_not_relus_keep_their_gradient(generator):
    """clamp(min=0, max=6) (ReLU6), clamp(min=0.5) and leaky_relu are not ReLUs: the rule leaves them alone."""
    x = torch.randn(64, generator=generator) * 4
    for fn in (lambda t: t.clamp(min=0, max=6), lambda t: t.clamp(min=0.5), lambda t: F.leaky_relu(t, 0.1)):
        relevance = torch.randn(64, generator=generator)
        a = x.clone().requires_grad_()
        (plain,) = torch.autograd.grad(fn(a), a, relevance)
        b = x.clone().requires_grad_()
        with relu_rules("deconvnet"):
            (ruled,) = torch.autograd.grad(fn(b), b, relevance)
        torch.testing.assert_close(ruled, plain, rtol=0, atol=0)


# --------------------------------------------------------------------------- scope and model state


def test_rules_are_scoped_and_leave_no_trace(functional_pair):
    _, twin = functional_pair
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    state = {k: v.clone() for k, v in twin.state_dict().items()}
    flags = [(m.training, getattr(m, "inplace", None)) for m in twin.modules()]
    with pytest.raises(RuntimeError, match="boom"), relu_rules("guided"):
        twin(x.clone().requires_grad_())
        raise RuntimeError("boom")
    # after the block (also after an exception) ReLUs have their true gradient again
    xx = x.clone().requires_grad_()
    (after,) = torch.autograd.grad(twin(xx)[:, 1].sum(), xx)
    torch.testing.assert_close(after, _plain_grads(twin, x, 1), rtol=0, atol=0)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in state.items())
    assert flags == [(m.training, getattr(m, "inplace", None)) for m in twin.modules()]
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in twin.modules())


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="unknown ReLU rule"), relu_rules("lrp"):  # type: ignore[arg-type]
        pass


def test_works_under_no_grad_with_frozen_parameters(zoo, images):
    model = copy.deepcopy(zoo["resnet18"]).requires_grad_(False)
    expected = explain(zoo["resnet18"], images, "guided_backprop", target=TARGET).maps
    with torch.no_grad():
        result = explain(model, images, "guided_backprop", target=TARGET)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(result.maps, expected, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.parameters())
