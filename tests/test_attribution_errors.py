"""Every registered method: bad inputs fail with a message that says what is wrong; awkward but valid calls work."""

import copy

import pytest
import torch
from torch import nn

from deepscope.attribution import ATTRIBUTIONS, explain

FAST = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"n_samples": 2},
    "scorecam": {"top_k": 4},
    "rise": {"n_masks": 8},
    "occlusion": {"window": 8, "stride": 8},
}
METHODS = ATTRIBUTIONS.names()


def _run(model, inputs, method, **kwargs):
    params = dict(FAST.get(method, {}))
    if "generator" in ATTRIBUTIONS.get(method).__dataclass_fields__:
        params["generator"] = torch.Generator().manual_seed(0)
    return explain(model, inputs, method, **params, **kwargs)


@pytest.fixture
def images(generator):
    return torch.rand(2, 3, 16, 16, generator=generator)


@pytest.mark.parametrize("method", METHODS)
def test_integer_images_are_refused(tiny_cnn, images, method):
    with pytest.raises(TypeError, match=r"floating point.*inputs\.float\(\)"):
        _run(tiny_cnn, (images * 255).to(torch.uint8), method)


@pytest.mark.parametrize("method", METHODS)
def test_wrong_channel_count_and_missing_batch_dimension(tiny_cnn, images, method):
    with pytest.raises(ValueError, match=r"expects \(N, 3, H, W\) images, got inputs of shape \(2, 1, 16, 16\)"):
        _run(tiny_cnn, images[:, :1], method)
    with pytest.raises(ValueError, match="add a batch dimension"):
        _run(tiny_cnn, images[0], method)


@pytest.mark.parametrize("method", METHODS)
def test_target_out_of_range(tiny_cnn, images, method):
    with pytest.raises(ValueError, match="out of range"):
        _run(tiny_cnn, images, method, target=99)


@pytest.mark.parametrize("method", METHODS)
def test_nan_in_the_model_output(tiny_cnn, images, method):
    model = nn.Sequential(tiny_cnn, _NaNLogit())
    with pytest.raises(ValueError, match="NaN"):
        _run(model, images, method)


class _NaNLogit(nn.Module):
    def forward(self, x):
        return x * torch.tensor([1.0] * (x.shape[1] - 1) + [float("nan")])


@pytest.mark.parametrize("method", [m for m in METHODS if ATTRIBUTIONS.get(m).needs_layer])
def test_cam_layer_without_a_spatial_output(tiny_cnn, images, method):
    last_linear = [name for name, m in tiny_cnn.named_modules() if isinstance(m, nn.Linear)][-1]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        _run(tiny_cnn, images, method, layer=last_linear)


@pytest.mark.parametrize("method", METHODS)
def test_works_under_no_grad_with_frozen_parameters(tiny_cnn, images, method):
    model = tiny_cnn.eval()
    expected = _run(model, images, method).maps
    frozen = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        maps = _run(frozen, images, method).maps
    torch.testing.assert_close(maps, expected)
    assert torch.is_grad_enabled()  # grad mode restored outside the block
    assert not any(p.requires_grad for p in frozen.parameters())
