"""deepscope.datasets: synthetic shapes with exact masks, and scikit-image's bundled photos."""

import sys
import time

import pytest
import torch

from deepscope.datasets import BACKGROUNDS, PHOTOS, SHAPES, ShapesData, sample_photos, shapes
from deepscope.errors import UnknownNameError

ALL = tuple(SHAPES)


@pytest.fixture(scope="module")
def many() -> ShapesData:
    return shapes(2000, seed=7)


def _equal(a: ShapesData, b: ShapesData) -> bool:
    return (
        torch.equal(a.images, b.images)
        and torch.equal(a.labels, b.labels)
        and torch.equal(a.masks, b.masks)
        and torch.equal(a.boxes, b.boxes)
        and torch.equal(a.colors, b.colors)
        and a.class_names == b.class_names
    )


def test_types_shapes_and_range():
    data = shapes(10, size=48, seed=0)
    assert len(data) == 10
    assert data.images.shape == (10, 3, 48, 48) and data.images.dtype == torch.float32
    assert data.labels.shape == (10,) and data.labels.dtype == torch.int64
    assert data.masks.shape == (10, 48, 48) and data.masks.dtype == torch.bool
    assert data.boxes.shape == (10, 4) and data.colors.shape == (10, 3)
    assert data.class_names == ("circle", "square", "triangle", "cross")
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.images.is_contiguous()


def test_reproducible_for_a_seed_and_different_across_seeds():
    assert _equal(shapes(40, seed=3), shapes(40, seed=3))
    a, b = shapes(40, seed=3), shapes(40, seed=4)
    assert not torch.equal(a.images, b.images)
    assert not torch.equal(a.masks, b.masks)


def test_global_rng_untouched():
    state = torch.get_rng_state()
    shapes(20, seed=1)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_object_colour_exactly_on_the_mask(background):
    data = shapes(200, seed=5, background=background, classes=ALL)
    painted = (data.images == data.colors[:, :, None, None]).all(dim=1)  # (N, H, W)
    assert torch.equal(painted, data.masks)


def test_every_shape_is_drawn_inside_the_image():
    data = shapes(120, size=32, seed=2, classes=ALL)
    area = data.masks.flatten(1).sum(1)
    assert (area > 10).all()
    border = (
        data.masks[:, 0].any(1) | data.masks[:, -1].any(1) | data.masks[:, :, 0].any(1) | data.masks[:, :, -1].any(1)
    )
    assert not border.any()


def test_boxes_are_tight():
    data = shapes(50, seed=9, classes=ALL)
    for mask, (x0, y0, x1, y1) in zip(data.masks, data.boxes.long().tolist(), strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_shapes_differ_between_classes():
    # the classes are different shapes: the fraction of its box each fills differs (circle .79, triangle .50)
    data = shapes(600, seed=0, classes=ALL)
    area = data.masks.flatten(1).sum(1).float()
    ratio = area / (data.boxes[:, 2] - data.boxes[:, 0]) / (data.boxes[:, 3] - data.boxes[:, 1])  # fill of the box
    means = torch.stack([ratio[data.labels == k].mean() for k in range(len(ALL))])
    assert means.max() - means.min() > 0.2


@pytest.mark.parametrize("n", [4, 103, 1000])
def test_classes_are_balanced(n):
    counts = shapes(n, seed=1).labels.bincount(minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_class_subset_and_order():
    data = shapes(30, seed=0, classes=("star", "ring"))
    assert data.class_names == ("star", "ring")
    assert set(data.labels.tolist()) == {0, 1}


def test_labels_are_shuffled(many):
    assert not torch.equal(many.labels, torch.arange(len(many)) % 4)


def test_background_statistics_do_not_reveal_the_class(many):
    """Mean and spread of the background (outside the mask), per class and channel, agree across classes."""
    outside = ~many.masks[:, None].expand_as(many.images)  # (N, 3, H, W)
    count = outside.sum((2, 3))  # (N, 3)
    mean = (many.images * outside).sum((2, 3)) / count  # (N, 3)
    var = (((many.images - mean[:, :, None, None]) ** 2) * outside).sum((2, 3)) / count
    per_class_mean = torch.stack([mean[many.labels == k].mean(0) for k in range(4)])  # (4, 3)
    per_class_std = torch.stack([var[many.labels == k].sqrt().mean(0) for k in range(4)])  # (4, 3)
    assert (per_class_mean.max(0).values - per_class_mean.min(0).values).max() < 0.03
    assert (per_class_std.max(0).values - per_class_std.min(0).values).max() < 0.01
    # the object colour does not depend on the class either
    per_class_colour = torch.stack([many.colors[many.labels == k].mean(0) for k in range(4)])
    assert (per_class_colour.max(0).values - per_class_colour.min(0).values).max() < 0.05


def test_backgrounds_are_textured_and_differ_between_images(many):
    image = many.images[:, :, :8, :8]  # corners are background for every image (shapes stay inside)
    assert image.std(dim=(2, 3)).mean() > 0.02  # textured, not flat
    assert many.images[:, :, 0, 0].std(0).min() > 0.05  # the backdrop varies between images


def test_fast_and_vectorised():
    shapes(8)  # warm-up
    start = time.perf_counter()
    shapes(1000, size=64)
    assert time.perf_counter() - start < 3.0  # ~0.2 s here; a per-pixel Python loop would take minutes


def test_device_argument_and_to():
    data = shapes(4, seed=0, device="cpu")
    assert data.images.device.type == "cpu"
    assert _equal(data.subset(slice(0, 2)), shapes(4, seed=0).subset(torch.tensor([0, 1])))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_images_on_cuda():
    data = shapes(8, seed=0, device="cuda")
    assert data.images.is_cuda and data.masks.is_cuda
    assert _equal(data.to("cpu"), shapes(8, seed=0))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n": 0}, ValueError),
        ({"n": 2.5}, ValueError),
        ({"n": 4, "size": 8}, ValueError),
        ({"n": 4, "classes": ("circle", "hexagon")}, UnknownNameError),
        ({"n": 4, "classes": "circle"}, TypeError),
        ({"n": 4, "classes": ()}, ValueError),
        ({"n": 4, "classes": ("circle", "circle")}, ValueError),
        ({"n": 4, "background": "checkerboard"}, UnknownNameError),
        ({"n": 4, "radius": (0.3, 0.2)}, ValueError),
        ({"n": 4, "radius": (0.1, 0.5)}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        shapes(**kwargs)


def test_unknown_shape_suggests_names():
    with pytest.raises(UnknownNameError, match="circle"):
        shapes(4, classes=("circel",))


def test_sample_photos():
    pytest.importorskip("skimage")
    photos = sample_photos(size=64)
    assert photos.shape == (3, 3, 64, 64) and photos.dtype == torch.float32
    assert photos.min() >= 0 and photos.max() <= 1 and photos.std() > 0.1
    assert sample_photos(("coffee",), size=32).shape == (1, 3, 32, 32)
    assert torch.equal(sample_photos("coffee", size=32), sample_photos(("coffee",), size=32))
    assert len(PHOTOS) >= 3


def test_sample_photos_bad_name():
    with pytest.raises(UnknownNameError, match="chelsea"):
        sample_photos(("chelsey",))


def test_sample_photos_without_scikit_image(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match=r"pip install 'deepscope\[vision\]'"):
        sample_photos()
