"""Receptive fields measured from the network match hand-computed convolution arithmetic."""

import pytest
import torch
import torchvision
from torch import nn

from deepscope.receptive import ReceptiveField, receptive_field


def _arithmetic(layers):
    """Size, jump and start of a plain stack from (kernel, stride, padding, dilation) per layer."""
    size, jump, start = 1, 1, 0
    for kernel, stride, padding, dilation in layers:
        span = dilation * (kernel - 1) + 1
        size += (span - 1) * jump
        start -= padding * jump
        jump *= stride
    return size, jump, start


@pytest.mark.parametrize(
    ("modules", "geometry"),
    [
        ([nn.Conv2d(1, 4, 3, padding=1)], [(3, 1, 1, 1)]),
        ([nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3)], [(5, 2, 2, 1), (3, 1, 0, 1)]),
        ([nn.Conv2d(1, 4, 3, dilation=2, padding=2), nn.Conv2d(4, 4, 3, stride=2)], [(3, 1, 2, 2), (3, 2, 0, 1)]),
        (
            [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
             nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(8, 8, 1)],
            [(3, 1, 1, 1), (2, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1)],
        ),
        (
            [nn.Conv2d(1, 4, 3), nn.AvgPool2d(3, stride=3), nn.Conv2d(4, 4, 2, stride=2)],
            [(3, 1, 0, 1), (3, 3, 0, 1), (2, 2, 0, 1)],
        ),
        (  # SqueezeNet's stem: on 24 px no unit sees the last pixel, so the last unit's field ends early
            [nn.Conv2d(1, 4, 7, stride=2), nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Conv2d(4, 4, 3, padding=1)],
            [(7, 2, 0, 1), (3, 2, 0, 1), (3, 1, 1, 1)],
        ),
    ],
)  # fmt: skip
def test_plain_stacks_match_the_arithmetic(modules, geometry):
    torch.manual_seed(0)
    net = nn.Sequential(*modules)
    rf = receptive_field(net, str(len(modules) - 1), (1, 24, 24))
    size, jump, start = _arithmetic(geometry)
    assert rf.size == (size, size) and rf.jump == (jump, jump) and rf.start == (start, start)


def test_branches_take_the_widest_path_of_a_resnet():
    model = torchvision.models.resnet18(weights=None)
    layer1 = receptive_field(model, "layer1", (3, 64, 64))
    layer2 = receptive_field(model, "layer2", (3, 64, 64))
    assert (layer1.size, layer1.jump, layer1.start) == ((43, 43), (4, 4), (-21, -21))  # conv1, pool, 4 convs
    assert (layer2.size, layer2.jump, layer2.start) == ((99, 99), (8, 8), (-49, -49))  # the downsample is narrower
    assert layer2.box(0, 0, (64, 64)) == (0, 0, 50, 50)  # clipped to the image
    assert layer2.box(3, 2, None) == (-49 + 24, -49 + 16, -49 + 24 + 99, -49 + 16 + 99)


def test_rectangular_fields_and_the_model_is_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 2)), nn.ReLU(), nn.Conv2d(4, 2, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rf = receptive_field(net, "2", (3, 20, 30))
    assert rf.size == (5, 9) and rf.jump == (1, 2) and rf.start == (-1, -2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert next(net.parameters()).dtype == torch.float32 and net.training


def test_fields_wider_than_the_input_grow_the_canvas():
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(12)])  # 25 pixels wide
    rf = receptive_field(net, "11", (1, 8, 8))
    assert rf.size == (25, 25) and rf.start == (-12, -12) and rf.box(4, 4, (8, 8)) == (0, 0, 8, 8)


@pytest.mark.parametrize(
    "field",
    [
        ReceptiveField("deep", (7, 5), (2, 3), (-3, -2)),  # fits the image; clipped at the borders
        ReceptiveField("wide", (25, 9), (4, 2), (-12, -4)),  # taller than the image: the tile is the image's height
    ],
)
def test_crop_cuts_each_box_out_of_its_image(field):
    images = torch.randn(30, 2, 12, 10, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.randint(0, 4, (30,)), torch.randint(0, 4, (30,))
    tiles, inside, boxes = field.crop(images, rows, cols)
    tile_h, tile_w = min(field.size[0], 12), min(field.size[1], 10)
    assert tiles.shape == (30, 2, tile_h, tile_w) and inside.shape == (30, tile_h, tile_w)
    for m, (i, j) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        top, left, bottom, right = field.box(i, j, (12, 10))
        assert tuple(boxes[m].tolist()) == (top, left, bottom, right)
        dy = top - field.box(i, j)[0] if tile_h == field.size[0] else 0
        dx = left - field.box(i, j)[1] if tile_w == field.size[1] else 0
        expected = torch.zeros(2, tile_h, tile_w)
        expected[:, dy : dy + bottom - top, dx : dx + right - left] = images[m, :, top:bottom, left:right]
        assert torch.equal(tiles[m], expected)
        assert int(inside[m].sum()) == (bottom - top) * (right - left) and bool(inside[m][expected[0] != 0].all())


def test_layers_without_a_grid_are_refused():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(ValueError, match="spatial layer output"):
        receptive_field(net, "2", (1, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        receptive_field(net, "0", (8, 8))


class _SqueezeExcite(nn.Module):
    """A squeeze-and-excitation gate: global pooling (by module or by ``mean``) feeding a per-channel scale."""

    def __init__(self, channels: int, by_mean: bool):
        super().__init__()
        self.by_mean = by_mean
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(channels, 2, 1), nn.ReLU(), nn.Conv2d(2, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x.mean((2, 3), keepdim=True) if self.by_mean else self.pool(x))


@pytest.mark.parametrize("by_mean", [False, True], ids=["pool-module", "mean"])
def test_squeeze_excitation_gates_do_not_widen_the_field(by_mean):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _SqueezeExcite(4, by_mean), nn.Conv2d(4, 4, 3, stride=2))
    rf = receptive_field(net, "2", (3, 24, 24))
    size, jump, start = _arithmetic([(3, 1, 1, 1), (3, 2, 0, 1)])
    assert (rf.size, rf.jump, rf.start) == ((size, size), (jump, jump), (start, start))


def test_a_mobilenet_v3_field_is_its_convolutions_field():
    """Squeeze-and-excitation blocks made every MobileNetV3 field global: the canvas grew until memory ran out."""
    model = torchvision.models.mobilenet_v3_small(weights=None)
    gated = receptive_field(model, "features.5", (3, 64, 64))
    for block in model.modules():  # without the gates: only the convolutions remain
        for name, child in block.named_children():
            if isinstance(child, torchvision.ops.SqueezeExcitation):
                setattr(block, name, nn.Identity())
    assert gated == receptive_field(model, "features.5", (3, 64, 64))
    assert gated.jump == (16, 16) and 64 < gated.size[0] < 200


def test_a_field_that_does_not_fit_in_memory_is_refused_with_its_cost(monkeypatch):
    class RunningSum(nn.Module):  # each unit sees every pixel to its left: no canvas is wide enough
        def forward(self, x):
            return x.cumsum(-1)

    monkeypatch.setattr("deepscope.receptive._MAX_PROBE_BYTES", 2**20)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), RunningSum(), nn.Conv2d(2, 2, 3, padding=1))
    with pytest.raises(ValueError, match=r"'2' is wider than the \d+×\d+ canvas .* (MiB|GiB) \(the limit is 1 MiB\)"):
        receptive_field(net, "2", (1, 16, 16))
    with pytest.raises(ValueError, match=r"pass a smaller input_shape"):
        receptive_field(net, "2", (1, 512, 512))


def test_a_layer_that_sees_two_windows_is_not_a_regular_grid():
    class Mirror(nn.Module):  # unit j sees around column j and around its mirror image
        def forward(self, x):
            return x + x.flip(-1)

    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Mirror(), nn.Conv2d(2, 2, 3, padding=1))
    with pytest.raises(ValueError, match="regular grid"):
        receptive_field(net, "2", (1, 16, 16))
