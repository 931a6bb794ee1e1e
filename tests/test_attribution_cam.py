"""CAM family: agreement with pytorch-grad-cam, torchcam and captum, hand-computed definitions, errors.

The torchvision models are randomly initialised, then made well-conditioned for comparisons:
BatchNorm statistics are re-estimated on random images (a random MobileNetV3's last features are
~1e-7, where the references' epsilons dominate) and the classifier is rescaled to logits of
standard deviation 3. The class explained is the predicted one, so the maps are not all zero.

Reference libraries run on deep copies (pytorch-grad-cam switches models to eval for good and
fills ``.grad``). They min-max normalise their maps, and pytorch-grad-cam upsamples them with
OpenCV, so maps are compared by per-sample Pearson correlation at input resolution; torchcam and
captum return layer-resolution maps, compared with ``upsample=False`` (they agree to float
precision). DenseNet is compared at ``features.denseblock4``: at ``features``, DenseNet's forward
applies ``F.relu(..., inplace=True)`` to the layer's output, which rewrites the activations
pytorch-grad-cam and torchcam stored (``detach()`` shares memory); deepscope and captum see the
layer's real output (see ``test_densenet_features_matches_captum``).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models

from _zoo import slim_vgg11_bn
from deepscope.attribution import ATTRIBUTIONS, explain

PX = 96
N = 2


# --------------------------------------------------------------------------- models


# name -> (builder, layer compared)
ARCHS = {
    "resnet18": (lambda: models.resnet18(weights=None), "layer4"),
    "vgg11_bn": (slim_vgg11_bn, "features"),
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(weights=None), "features"),
    "densenet121": (lambda: models.densenet121(weights=None), "features.denseblock4"),
}


def _calibrated(model: nn.Module, px: int) -> nn.Module:
    """Re-estimate BatchNorm statistics on random images and rescale the head to logits of std 3."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
        model.train()
        model(torch.randn(8, 3, px, px, generator=torch.Generator().manual_seed(2)))
        model.eval()
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        scale = 3 / model(torch.randn(4, 3, px, px, generator=torch.Generator().manual_seed(3))).std()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


@pytest.fixture(scope="module")
def zoo():
    """``get(arch) -> (model, inputs, predicted classes, layer name)``, each model built once."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            build, layer = ARCHS[arch]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = _calibrated(build(), PX)
            inputs = torch.randn(N, 3, PX, PX, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                classes = model(inputs).argmax(1).tolist()
            cache[arch] = model, inputs, classes, layer
        return cache[arch]

    return get


def _seeded(cls: type[nn.Module], *args: object) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(*args).eval()


def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample Pearson correlation of two map batches ``(N, ...)``."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def assert_agree(ours: Tensor, ref: Tensor, threshold: float = 0.999) -> None:
    assert ours.shape == ref.shape
    assert (ours.flatten(1).std(1) > 0).all(), "degenerate (constant) maps make the comparison vacuous"
    r = pearson(ours, ref)
    assert (r >= threshold).all(), f"Pearson {r.tolist()}"


# --------------------------------------------------------------------------- references

GRADIENT_METHODS = ["gradcam", "gradcam_pp", "xgradcam", "layercam"]


def _pytorch_grad_cam(method: str, model: nn.Module, layer: str, inputs: Tensor, classes: list[int]) -> Tensor:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": pgc.GradCAM,
        "gradcam_pp": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "scorecam": pgc.ScoreCAM,
    }[method]
    copied = copy.deepcopy(model)
    with cls(model=copied, target_layers=[_module(copied, layer)]) as cam:
        cam.batch_size = 64
        maps = cam(input_tensor=inputs.clone(), targets=[ClassifierOutputTarget(c) for c in classes])
    return torch.from_numpy(maps)


def _torchcam(method: str, model: nn.Module, layer: str, inputs: Tensor, classes: list[int]) -> Tensor:
    import torchcam.methods as tcm

    logging.getLogger("torchcam").setLevel(logging.ERROR)
    copied = copy.deepcopy(model)
    if method == "scorecam":
        with tcm.ScoreCAM(copied, target_layer=layer, batch_size=64) as extractor:
            with torch.inference_mode():
                copied(inputs)
            return extractor(class_idx=classes, normalized=False)[0]
    cls = {"gradcam": tcm.GradCAM, "xgradcam": tcm.XGradCAM, "layercam": tcm.LayerCAM}[method]
    with cls(copied, target_layer=layer) as extractor:
        scores = copied(inputs)
        return extractor(class_idx=classes, scores=scores, normalized=False)[0].detach()


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_matches_pytorch_grad_cam(zoo, arch, method):
    model, inputs, classes, layer = zoo(arch)
    ours = explain(model, inputs, method, target=classes, layer=layer).maps
    assert_agree(ours, _pytorch_grad_cam(method, model, layer, inputs, classes))


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_matches_torchcam_at_layer_resolution(zoo, arch, method):
    model, inputs, classes, layer = zoo(arch)
    ours = explain(model, inputs, method, target=classes, layer=layer, upsample=False).maps
    ref = _torchcam(method, model, layer, inputs, classes)
    assert_agree(ours, ref)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def _captum_gradcam(model: nn.Module, layer: str, inputs: Tensor, classes: list[int]) -> Tensor:
    from captum.attr import LayerGradCam

    copied = copy.deepcopy(model)
    maps = LayerGradCam(copied, _module(copied, layer)).attribute(inputs, target=classes, relu_attributions=True)
    return maps[:, 0].detach()  # (N, h, w)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gradcam_matches_captum(zoo, arch):
    model, inputs, classes, layer = zoo(arch)
    ours = explain(model, inputs, "gradcam", target=classes, layer=layer, upsample=False).maps
    ref = _captum_gradcam(model, layer, inputs, classes)
    assert_agree(ours, ref)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    upsampled = explain(model, inputs, "gradcam", target=classes, layer=layer).maps
    torch.testing.assert_close(upsampled, F.interpolate(ref[:, None], size=(PX, PX), mode="bilinear")[:, 0])


def test_densenet_features_matches_captum(zoo):
    """At ``features`` (followed by an in-place functional ReLU) deepscope explains the real layer output."""
    model, inputs, classes, _ = zoo("densenet121")
    ours = explain(model, inputs, "gradcam", target=classes, layer="features", upsample=False).maps
    torch.testing.assert_close(ours, _captum_gradcam(model, "features", inputs, classes), rtol=1e-4, atol=1e-6)


def test_scorecam_channel_softmax_matches_torchcam(zoo):
    """torchcam normalises the activations before upsampling them; deepscope (like the authors) after."""
    model, inputs, classes, layer = zoo("mobilenet_v3_small")
    ours = explain(model, inputs, "scorecam", target=classes, layer=layer, upsample=False, score="channel_softmax")
    assert_agree(ours.maps, _torchcam("scorecam", model, layer, inputs, classes))


class FullResolution(nn.Module):
    """A CNN whose last feature map has the input's resolution: Score-CAM's masks need no upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


@pytest.fixture
def full_resolution() -> nn.Module:
    return _seeded(FullResolution)


def test_scorecam_channel_softmax_matches_both_references_without_upsampling(full_resolution, generator):
    """Where no upsampling is involved the mask constructions coincide: the definitions are the same."""
    inputs = torch.randn(2, 3, 16, 16, generator=generator)
    classes = [1, 3]
    ours = explain(full_resolution, inputs, "scorecam", target=classes, layer="body", score="channel_softmax").maps
    assert_agree(ours, _torchcam("scorecam", full_resolution, "body", inputs, classes))
    assert_agree(ours, _pytorch_grad_cam("scorecam", full_resolution, "body", inputs, classes))


# --------------------------------------------------------------------------- definitions by hand


def _acts_and_grads(model: nn.Module, layer: nn.Module, inputs: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
    """The layer's output and ``∂y_c/∂A`` with plain autograd (the independent reference)."""
    store: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: store.append(out))
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    score = logits.gather(1, torch.tensor(classes)[:, None]).sum()
    (grads,) = torch.autograd.grad(score, store[0])
    return store[0].detach(), grads


def _combine(weights: Tensor, acts: Tensor) -> Tensor:
    return (weights[:, :, None, None] * acts).sum(1)


@pytest.fixture
def tiny(tiny_cnn, generator) -> tuple[nn.Module, Tensor, list[int]]:
    return tiny_cnn.eval(), torch.randn(2, 3, 16, 16, generator=generator), [2, 5]


def _hand_gradcam_pp(acts: Tensor, grads: Tensor) -> Tensor:
    g2, g3 = grads**2, grads**3
    denominator = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(grads != 0, g2 / denominator, torch.zeros_like(grads))
    return _combine((alpha * grads.clamp(min=0)).sum(dim=(2, 3)), acts).clamp(min=0)


HAND = {
    "gradcam": lambda a, g: _combine(g.mean(dim=(2, 3)), a).clamp(min=0),
    "gradcam_pp": _hand_gradcam_pp,
    "xgradcam": lambda a, g: _combine((a * g).sum(dim=(2, 3)) / a.sum(dim=(2, 3)), a).clamp(min=0),
    "layercam": lambda a, g: (g.clamp(min=0) * a).sum(1).clamp(min=0),
}


@pytest.mark.parametrize("method", list(HAND))
def test_gradient_methods_by_hand(tiny, method):
    """At the pre-ReLU convolution ``features.4`` gradients vary over positions and are 0 where the ReLU is off."""
    model, inputs, classes = tiny
    acts, grads = _acts_and_grads(model, model.features[4], inputs, classes)
    assert (grads == 0).any() and (grads != 0).any()
    expected = HAND[method](acts, grads)  # (N, 8, 8)
    ours = explain(model, inputs, method, target=classes, layer="features.4", upsample=False).maps
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    upsampled = explain(model, inputs, method, target=classes, layer="features.4").maps
    torch.testing.assert_close(upsampled, F.interpolate(expected[:, None], size=(16, 16), mode="bilinear")[:, 0])


def test_cam_is_the_head_weights_times_the_features(tiny):
    model, inputs, classes = tiny
    acts, _ = _acts_and_grads(model, model.features, inputs, classes)
    expected = _combine(model.fc.weight.detach()[classes], acts)  # Σ_k w_ck A^k, signed
    ours = explain(model, inputs, "cam", target=classes, layer="features", upsample=False).maps
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert (ours < 0).any(), "CAM is signed: no ReLU"


def test_cam_on_resnet_uses_fc_rows(zoo):
    model, inputs, classes, _ = zoo("resnet18")
    acts, _ = _acts_and_grads(model, model.layer4, inputs, classes)
    ours = explain(model, inputs, "cam", target=classes, layer="layer4", upsample=False).maps
    torch.testing.assert_close(ours, _combine(model.fc.weight.detach()[classes], acts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_gradcam_is_relu_cam_over_z_on_gap_linear_heads(arch, tiny, zoo):
    model, inputs, classes, layer = (*tiny, "features") if arch == "tiny" else zoo("resnet18")
    cam = explain(model, inputs, "cam", target=classes, layer=layer, upsample=False).maps
    gradcam = explain(model, inputs, "gradcam", target=classes, layer=layer, upsample=False).maps
    z = cam.shape[-1] * cam.shape[-2]  # h·w of the layer
    torch.testing.assert_close(gradcam * z, cam.clamp(min=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("arch", "layer"), [("vgg11_bn", "features"), ("mobilenet_v3_small", "features")])
def test_cam_rejects_heads_that_are_not_gap_linear(zoo, arch, layer):
    model, inputs, classes, _ = zoo(arch)
    with pytest.raises(ValueError, match="global average pooling"):
        explain(model, inputs, "cam", target=classes, layer=layer)


def test_cam_rejects_a_relu_between_layer_and_pooling(zoo):
    model, inputs, classes, _ = zoo("densenet121")  # features -> F.relu -> avgpool -> classifier
    with pytest.raises(ValueError, match="gradcam"):
        explain(model, inputs, "cam", target=classes, layer="features")


def _hand_scorecam(model: nn.Module, layer: nn.Module, inputs: Tensor, classes: list[int], channels=None) -> Tensor:
    """Score-CAM as the authors' code computes it: one masked image at a time, softmax probability weights."""
    acts, _ = _acts_and_grads(model, layer, inputs, classes)
    maps = []
    with torch.no_grad():
        for i, c in enumerate(classes):
            total = torch.zeros(acts.shape[-2:])
            for k in range(acts.shape[1]) if channels is None else channels[i]:
                up = F.interpolate(acts[i : i + 1, k : k + 1], size=inputs.shape[-2:], mode="bilinear")
                if up.max() == up.min():
                    continue
                mask = (up - up.min()) / (up.max() - up.min())
                probability = model(inputs[i : i + 1] * mask).softmax(-1)[0, c]
                total += probability * acts[i, k]
            maps.append(total.clamp(min=0))
    return torch.stack(maps)


def test_scorecam_probability_by_hand(tiny):
    model, inputs, classes = tiny
    expected = _hand_scorecam(model, model.features, inputs, classes)
    ours = explain(model, inputs, "scorecam", target=classes, layer="features", upsample=False, batch_size=5)
    torch.testing.assert_close(ours.maps, expected, rtol=1e-5, atol=1e-6)


def test_scorecam_top_k_scores_the_most_active_channels(tiny):
    model, inputs, classes = tiny
    acts, _ = _acts_and_grads(model, model.features, inputs, classes)
    top = acts.mean(dim=(2, 3)).topk(3, dim=1).indices.tolist()
    expected = _hand_scorecam(model, model.features, inputs, classes, channels=top)
    ours = explain(model, inputs, "scorecam", target=classes, layer="features", upsample=False, top_k=3).maps
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    everything = explain(model, inputs, "scorecam", target=classes, layer="features", top_k=8).maps
    torch.testing.assert_close(everything, explain(model, inputs, "scorecam", target=classes, layer="features").maps)


def test_scorecam_runs_batched_and_fixes_the_predicted_class(tiny):
    """Masked inputs go through the model ``batch_size`` at a time; ``target=None`` keeps the unmasked prediction."""
    model, inputs, _ = tiny
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        result = explain(model, inputs, "scorecam", layer="features", batch_size=6)
    finally:
        handle.remove()
    assert sizes[0] == 2  # the first forward gives the activations
    assert sum(sizes[1:]) <= 2 * 8 and all(s == 6 for s in sizes[1:-1]) and 0 < sizes[-1] <= 6
    with torch.no_grad():
        predicted = model(inputs).argmax(1).tolist()
    assert result.target == predicted
    torch.testing.assert_close(result.maps, explain(model, inputs, "scorecam", target=predicted, layer="features").maps)


@pytest.mark.parametrize("params", [{"batch_size": 0}, {"top_k": 0}, {"score": "logit"}])
def test_scorecam_rejects_bad_parameters(tiny, params):
    model, inputs, _ = tiny
    with pytest.raises(ValueError):
        explain(model, inputs, "scorecam", **params)


# --------------------------------------------------------------------------- layers


def test_fusion_is_the_elementwise_max_of_upsampled_layer_maps(tiny):
    model, inputs, classes = tiny
    single = [
        explain(model, inputs, "layercam", target=classes, layer=name).maps for name in ("features.1", "features")
    ]
    fused = explain(model, inputs, "layercam", target=classes, layer=["features.1", "features"])
    torch.testing.assert_close(fused.maps, torch.maximum(*single))
    assert list(fused.extras["layer_maps"]) == ["features.1", "features"]
    assert fused.layer == "features.1, features"
    coarse = explain(model, inputs, "layercam", target=classes, layer=["features.1", "features"], upsample=False)
    assert coarse.maps.shape[-2:] == (16, 16)  # the finest layer's resolution (features.1 is not pooled)


class InPlaceAfterEachLayer(nn.Module):
    """Each explained convolution is followed by an in-place ReLU, like DenseNet after ``features``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu_(self.conv2(F.relu(self.conv1(x), inplace=True)))
        return self.fc(x.mean(dim=(2, 3)))


def test_fusion_keeps_each_layer_output_before_later_in_place_ops(generator):
    torch.manual_seed(0)
    model, inputs = InPlaceAfterEachLayer().eval(), torch.randn(2, 3, 8, 8, generator=generator)
    single = [explain(model, inputs, "gradcam", target=1, layer=name).maps for name in ("conv1", "conv2")]
    fused = explain(model, inputs, "gradcam", target=1, layer=["conv1", "conv2"])
    torch.testing.assert_close(fused.maps, torch.maximum(*single))


class TinyViT(nn.Module):
    """Patch embedding to tokens, an optional class token, a token-wise block and a mean-pooled head."""

    def __init__(self, cls_token: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8)) if cls_token else None
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, HW, 8)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)  # (N, 1 + HW, 8)
        return self.head(self.block(tokens).mean(1))


@pytest.mark.parametrize("cls_token", [True, False], ids=["cls", "no-cls"])
def test_token_outputs_become_square_grids(cls_token, generator):
    model = _seeded(TinyViT, cls_token)
    inputs = torch.randn(2, 3, 16, 16, generator=generator)  # 4 x 4 patches
    skip = 1 if cls_token else 0

    def reshape(t: Tensor) -> Tensor:
        return t[:, skip:].transpose(1, 2).reshape(t.shape[0], 8, 4, 4)

    auto = explain(model, inputs, "gradcam", target=1, layer="block", upsample=False).maps
    explicit = explain(model, inputs, "gradcam", target=1, layer="block", reshape=reshape, upsample=False).maps
    assert auto.shape == (2, 4, 4)
    torch.testing.assert_close(auto, explicit)
    assert explain(model, inputs, "gradcam", target=1, layer="block").maps.shape == (2, 16, 16)


def test_token_outputs_without_a_square_grid_need_reshape(generator):
    model = _seeded(TinyViT, True)
    inputs = torch.randn(2, 3, 12, 16, generator=generator)  # 3 x 4 patches + class token
    with pytest.raises(ValueError, match="reshape="):
        explain(model, inputs, "gradcam", layer="block")

    def reshape(t: Tensor) -> Tensor:
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], 8, 3, 4)

    assert explain(model, inputs, "gradcam", layer="block", reshape=reshape).maps.shape == (2, 12, 16)
    with pytest.raises(ValueError, match=r"reshape= must map"):
        explain(model, inputs, "gradcam", layer="block", reshape=lambda t: t[:, 1:])


# --------------------------------------------------------------------------- errors and robustness

CAM_METHODS = ["cam", "gradcam", "gradcam_pp", "xgradcam", "layercam", "scorecam"]


@pytest.mark.parametrize("method", CAM_METHODS)
def test_layer_without_spatial_output_is_rejected(tiny, method):
    model, inputs, _ = tiny
    with pytest.raises(ValueError, match="no spatial dimensions"):
        explain(model, inputs, method, layer="fc")


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_layer_that_runs_twice_is_rejected(method, generator):
    with pytest.raises(RuntimeError, match="ran twice"):
        explain(_seeded(Twice), torch.randn(2, 3, 8, 8, generator=generator), method, layer="conv")


@pytest.mark.parametrize("method", CAM_METHODS)
def test_target_out_of_range(tiny, method):
    model, inputs, _ = tiny
    with pytest.raises(ValueError, match="out of range"):
        explain(model, inputs, method, target=10, layer="features")


def test_non_image_inputs_are_rejected(demo_mlp, generator):
    with pytest.raises(ValueError):
        explain(demo_mlp, torch.randn(4, 2, generator=generator), "gradcam", layer="hidden")


@pytest.mark.parametrize("method", CAM_METHODS)
def test_works_under_no_grad_and_with_frozen_parameters(tiny, method):
    model, inputs, classes = tiny
    expected = explain(model, inputs, method, target=classes, layer="features").maps
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        frozen = explain(model, inputs, method, target=classes, layer="features")
    torch.testing.assert_close(frozen.maps, expected)
    assert not any(p.requires_grad for p in model.parameters())


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(tiny):
    if "guided_backprop" not in ATTRIBUTIONS:
        pytest.xfail("guided_backprop (gradient rules) is not registered yet; guided_gradcam needs it")
    model, inputs, classes = tiny
    guided = explain(model, inputs, "guided_backprop", target=classes).maps  # (N, C, H, W)
    gradcam = explain(model, inputs, "gradcam", target=classes, layer="features").maps  # (N, H, W)
    ours = explain(model, inputs, "guided_gradcam", target=classes, layer="features").maps
    torch.testing.assert_close(ours, guided * gradcam[:, None])
    with pytest.raises(ValueError, match="upsample"):
        explain(model, inputs, "guided_gradcam", upsample=False)


@pytest.mark.cuda
@pytest.mark.parametrize("method", [*CAM_METHODS, "guided_gradcam"])
def test_cuda_maps_match_cpu(tiny, method):
    model, inputs, classes = tiny
    expected = explain(model, inputs, method, target=classes, layer="features").maps
    result = explain(copy.deepcopy(model).cuda(), inputs, method, target=classes, layer="features")
    assert result.maps.device.type == "cuda"
    torch.testing.assert_close(result.maps.cpu(), expected, rtol=1e-4, atol=1e-5)
