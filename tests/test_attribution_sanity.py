"""The sanity check: similarities match scipy and scikit-image, gradients decorrelate, fixed maps fail."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from _model_state import assert_unchanged, fingerprint
from deepscope.attribution import ATTRIBUTIONS, Attribution
from deepscope.attribution.base import Context, MethodOutput
from deepscope.attribution.sanity import sanity_check, spearman, ssim

# --------------------------------------------------------------------------- similarities


def test_spearman_matches_scipy_with_ties(generator):
    a = torch.rand(3, 12, 12, generator=generator)
    b = a + 0.5 * torch.rand(3, 12, 12, generator=generator)
    a[0, :6] = 0.0  # ties, as ReLU'd maps have
    b[1] = b[1].round(decimals=1)
    expected = [spearmanr(a[i].flatten(), b[i].flatten())[0] for i in range(3)]
    torch.testing.assert_close(spearman(a, b), torch.tensor(expected, dtype=torch.float32))
    assert torch.isnan(spearman(torch.ones(1, 4), torch.rand(1, 4, generator=generator))).all()


def test_ssim_hand_computed_cases(generator):
    a = torch.rand(2, 16, 16, generator=generator)
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    # Constant images c1, c2: no variance, so SSIM = (2·c1·c2 + C1) / (c1² + c2² + C1) with C1 = (0.01·1)².
    c1, c2, k = 0.2, 0.7, 0.01**2
    expected = (2 * c1 * c2 + k) / (c1**2 + c2**2 + k)
    torch.testing.assert_close(ssim(torch.full((1, 16, 16), c1), torch.full((1, 16, 16), c2)), torch.tensor([expected]))
    with pytest.raises(ValueError, match="does not fit"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


def test_ssim_matches_scikit_image(generator):
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the SSIM reference")
    a = torch.rand(3, 24, 30, generator=generator)
    b = (a + 0.3 * torch.rand(3, 24, 30, generator=generator)) / 1.3
    expected = [
        metrics.structural_similarity(
            a[i].double().numpy(), b[i].double().numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
        for i in range(3)
    ]  # fmt: skip
    torch.testing.assert_close(ssim(a, b), torch.tensor(np.array(expected), dtype=torch.float32), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- sanity check


def _square_images(n, generator):
    """Noise plus a bright 8×8 square in one of four quadrants; the quadrant is the class."""
    y = torch.randint(0, 4, (n,), generator=generator)
    top = (y // 2) * 16 + torch.randint(2, 7, (n,), generator=generator)
    left = (y % 2) * 16 + torch.randint(2, 7, (n,), generator=generator)
    grid = torch.arange(32)
    rows = (grid >= top[:, None]) & (grid < top[:, None] + 8)  # (N, 32)
    cols = (grid >= left[:, None]) & (grid < left[:, None] + 8)
    square = (rows[:, :, None] & cols[:, None, :]).float()[:, None]  # (N, 1, 32, 32)
    return 0.1 * torch.randn(n, 3, 32, 32, generator=generator) + square, y


@pytest.fixture(scope="module")
def trained_cnn():
    """A five-conv CNN with max-pools, trained in ~40 steps to read the square's quadrant."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 4),
        )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        x, y = _square_images(16, generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    x, y = _square_images(64, generator)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    return model.eval(), x[:4]


def test_sanity_check_gradient_decorrelates(trained_cnn):
    model, x = trained_cnn
    before = fingerprint(model)
    check = sanity_check(model, x, "saliency", generator=torch.Generator().manual_seed(1), keep_maps=True)
    assert_unchanged(before, fingerprint(model))
    assert check.layers == ("14", "10", "7", "5", "2", "0")  # top layer first
    assert check.similarity["spearman"].shape == check.similarity["ssim"].shape == (6, 4)
    assert check.maps.shape == (7, 4, 32, 32)
    assert check.passed and check.final < 0.3  # Adebayo et al.: gradients depend on the weights
    assert check.mean("ssim")[-1] < 0.3
    again = sanity_check(model, x, "saliency", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.similarity["spearman"], check.similarity["spearman"])


def test_guided_backprop_stays_more_similar_than_gradient(trained_cnn):
    if "guided_backprop" not in ATTRIBUTIONS:
        pytest.skip("guided_backprop is not registered yet (attribution/backprop_rules.py)")
    model, x = trained_cnn
    gradient = sanity_check(model, x, "saliency", similarity="spearman", generator=torch.Generator().manual_seed(1))
    guided = sanity_check(
        model, x, "guided_backprop", similarity="spearman", generator=torch.Generator().manual_seed(1)
    )
    # Adebayo et al.: Guided Backprop is far less sensitive to randomising the top layers than the gradient.
    assert guided.mean()[:4].mean() > gradient.mean()[:4].mean() + 0.1


@dataclasses.dataclass(frozen=True)
class InputEdges(Attribution):
    """A 'method' that ignores the model: |x| summed over channels, plus noise from its generator."""

    generator: torch.Generator | None = None

    def compute(self, ctx: Context) -> MethodOutput:
        noise = torch.rand(ctx.inputs.shape[-2:], generator=self.generator)
        scores = ctx.target(ctx.model(ctx.inputs)).detach()
        return MethodOutput(maps=ctx.inputs.abs().sum(1) + 1e-3 * noise, scores=scores)


def test_sanity_check_fails_a_model_independent_method(trained_cnn):
    """Same noise at every step (one seed), no dependence on the weights: similarity 1, the check fails."""
    model, x = trained_cnn
    check = sanity_check(model, x, InputEdges(), generator=torch.Generator().manual_seed(0))
    assert check.method == "InputEdges" and not check.passed
    torch.testing.assert_close(check.similarity["spearman"], torch.ones(6, 4))
    torch.testing.assert_close(check.similarity["ssim"], torch.ones(6, 4))
    assert "fails" in repr(check)


def test_sanity_check_layer_methods_and_validation(tiny_cnn, generator):
    x = torch.randn(2, 3, 16, 16, generator=generator)
    model = tiny_cnn.train()
    before = fingerprint(model)
    occlusion = sanity_check(model, x, "occlusion", window=8, stride=8, similarity=("spearman",))
    assert occlusion.similarity["spearman"].shape == (3, 2) and "ssim" not in occlusion.similarity
    assert_unchanged(before, fingerprint(model))
    assert model.training
    with pytest.raises(ValueError, match="similarity"):
        sanity_check(model, x, "saliency", similarity=("pearson",))
    with pytest.raises(TypeError, match="no parameter"):
        sanity_check(model, x, "saliency", n_steps=3)


def test_sanity_check_resolves_layers_given_as_modules(tiny_cnn, generator):
    if "gradcam" not in ATTRIBUTIONS:
        pytest.skip("gradcam is not registered yet (attribution/cam.py)")
    x = torch.randn(2, 3, 16, 16, generator=generator)
    check = sanity_check(tiny_cnn, x, "gradcam", layer=tiny_cnn.features[4], generator=generator)
    assert check.similarity["spearman"].shape == (3, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rise_coverage_pattern_fails_the_check_unless_normalised_away(trained_cnn, seed):
    """The paper's RISE estimate carries the masks' coverage pattern, the same for every model."""
    model, x = trained_cnn

    def final(**params):
        check = sanity_check(
            model, x, "rise", n_masks=128, similarity="spearman", generator=torch.Generator(), **params
        )
        return check.final

    paper, coverage = final(), final(normalize="coverage")
    assert paper > 0.5 and coverage < 0.5 and paper - coverage > 0.3
