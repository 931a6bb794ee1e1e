"""The occlusion study (Fig. 7) and invariance curves (Fig. 5)."""

import pytest
import torch
from torch import nn

from deepscope.attribution import explain
from deepscope.occlusion import occlusion_study
from deepscope.robustness import invariance, transform_images


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


@pytest.fixture
def images(generator):
    return torch.rand(3, 3, 16, 16, generator=generator)


def test_identity_and_full_turns_change_nothing(images):
    model = _cnn()
    curves = invariance(model, images, "rotation", values=[0, 90, 360, -360], layers=["1", "4"])
    for distance in curves.distances.values():
        assert torch.equal(distance[0], torch.zeros(3)) and torch.equal(distance[2], torch.zeros(3))
        assert torch.equal(distance[3], torch.zeros(3)) and (distance[1] > 0).all()
    assert torch.equal(curves.probability[0], curves.probability[2])
    shifted = invariance(model, images, "translation", values=[0.0, 2.0], layers=["4"], labels=[0, 1, 2])
    model.eval()
    with torch.no_grad():
        p = model(images).softmax(1)[torch.arange(3), torch.tensor([0, 1, 2])]
    torch.testing.assert_close(shifted.probability[0], p)
    assert torch.equal(invariance(model, images, "scale", values=[1.0], layers=["4"]).distances["4"][0], torch.zeros(3))


def test_transforms_move_pixels_the_right_way():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 3] = 1.0
    assert transform_images(image, "translation", 2.0)[0, 0, 4, 5] == pytest.approx(1.0)  # right and down
    turned = transform_images(image, "rotation", 90.0)[0, 0]
    assert turned.sum() == pytest.approx(1.0, abs=1e-5) and int(turned.argmax()) != int(image[0, 0].argmax())
    assert transform_images(image, "scale", 2.0)[0, 0].sum() > 1.0  # a zoom spreads the pixel
    with pytest.raises(ValueError, match="scale factors must be > 0"):
        transform_images(image, "scale", 0.0)


def test_invariance_refuses_what_is_not_an_image_batch(images):
    with pytest.raises(ValueError, match=r"batch of images \(N, C, H, W\)"):
        invariance(_cnn(), images[0], "rotation")
    with pytest.raises(ValueError, match="transform must be"):
        invariance(_cnn(), images, "shear", values=[1.0], layers=["4"])
    with pytest.raises(ValueError, match="one class per image"):
        invariance(_cnn(), images, "rotation", values=[0], layers=["4"], labels=[0, 1])


def test_the_occlusion_study_matches_the_occlusion_engine(images, tmp_path):
    model = _cnn()
    study = occlusion_study(model, images[0], "4", target=2, window=4, stride=2, class_names=list("abcd"))
    reference = explain(
        model, images[:1], "occlusion", target=2, window=4, stride=2, baseline=0.5, score="probability",
        extras=("top_class",), activation_layer="4",
    )  # fmt: skip
    torch.testing.assert_close(study.probability, reference.extras["score"][0])
    torch.testing.assert_close(study.activation, reference.extras["activation"][0])
    assert torch.equal(study.top_class, reference.extras["top_class"][0])
    row, column = study.worst
    grid = study.probability
    assert grid[row // 2, column // 2] == grid.min()
    assert study.projection.shape == (3, 16, 16) and study.projection.abs().sum() > 0
    assert study.save(tmp_path / "occ.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one image"):
        occlusion_study(model, images, "4")
    with pytest.raises(ValueError, match="class_names has 2 names"):
        occlusion_study(model, images[0], "4", class_names=["a", "b"])


def _state(model):
    return (
        model.training,
        [m.training for m in model.modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad.clone() if p.grad is not None else None for p in model.parameters()],
        [p.requires_grad for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    )


def _raising(model, images):
    with pytest.raises(ValueError, match="one class per image"):  # raised inside, after the first forward passes
        invariance(model, images, "rotation", values=[0], layers=["1"], labels=[0])


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[4] == b[4] and a[5] == b[5]
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[3], b[3], strict=True))


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: __import__("deepscope").filters(m),
        lambda m, x: __import__("deepscope").activations(m, x, ["1", "4"]),
        lambda m, x: __import__("deepscope").top_activations(m, x, "4", k=2),
        lambda m, x: __import__("deepscope").deconv_project(m, x, "4"),
        lambda m, x: __import__("deepscope").receptive_field(m, "4", (3, 16, 16)),
        lambda m, x: occlusion_study(m, x[0], "4", window=8, stride=4),
        lambda m, x: invariance(m, x, "rotation", values=[0, 90], layers=["1"]),
        lambda m, x: _raising(m, x),
    ],
    ids=["filters", "activations", "top_activations", "deconv", "receptive", "occlusion", "invariance", "raising"],
)
def test_the_layer_toolkit_leaves_the_model_as_it_was(images, call):
    model = _cnn()
    model.train()
    model[0].eval()  # a mixed state must come back mixed
    model[3].weight.requires_grad_(False)
    model(images).sum().backward()  # gradients the user has not consumed yet
    model[1].register_forward_hook(lambda *args: None)  # a hook of the user's
    before = _state(model)
    call(model, images)
    _same(before, _state(model))
