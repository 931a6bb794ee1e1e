"""Filters, layer inspection recorded as a run, the report's Layers section and `deepscope inspect`."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepscope.cli import main
from deepscope.filter_bank import filters
from deepscope.inspection import inspect_layers
from deepscope.report import build_report
from deepscope.store import RunReader


def _cnn(in_channels=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )  # fmt: skip


def test_filters_are_the_first_convolution_weights_drawn_with_their_scale(tmp_path):
    model = _cnn()
    bank = filters(model)
    assert bank.layer == "0" and torch.equal(bank.weights, model[0].weight.detach())
    assert filters(model, "3", normalize="per_filter").weights.shape == (6, 4, 3, 3)
    png = bank.save(tmp_path / "f.png")
    assert png.read_bytes().startswith(b"\x89PNG") and bank._repr_png_().startswith(b"\x89PNG")
    filters(_cnn(in_channels=2)).save(tmp_path / "grey.png")  # one tile per input channel
    with pytest.raises(ValueError, match="not a 2-D convolution"):
        filters(model, "7")
    with pytest.raises(ValueError, match=r"no nn\.Conv2d"):
        filters(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="per_filter"):
        filters(model, normalize="each")


def test_an_inspection_is_recorded_and_reported(tmp_path, generator):
    model = _cnn()
    images = torch.rand(20, 3, 16, 16, generator=generator)
    result = inspect_layers(model, images, ["1", "4"], channels=[0, 2], k=3, description="random images")
    run = result.record(tmp_path / "layers", name="tiny CNN: layers")
    with RunReader(run) as reader:
        meta = reader.meta()
        assert meta["layers/top"] == ["1", "4"] and meta["layers/images"] == 20
        assert meta["layers/top/4"]["field"] == {"size": [8, 8], "jump": [2, 2], "start": [-3, -3]}  # conv, pool, conv
        np.testing.assert_allclose(reader.tensor("layers/top/1/scores", 0), result.top["1"].scores.numpy(), rtol=1e-6)
        assert reader.tensor("layers/top/4/patches", 0).shape == (2, 3, 3, 8, 8)
    html = build_report(run).read_text()
    assert "What the layers respond to (tiny CNN: layers)" in html and "random images" in html
    figures = {p.name for p in (tmp_path / "layers" / "figures").iterdir()}
    assert {"filters_tiny_CNN__layers.png", "top_tiny_CNN__layers_1.png", "top_tiny_CNN__layers_4.png"} <= figures


def test_cli_inspects_image_files(tmp_path, generator, monkeypatch):
    for i in range(5):
        pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
    (tmp_path / "tinynet.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), "
        "nn.Linear(4 * 8 * 8, 2))\n"
    )
    monkeypatch.chdir(tmp_path)
    files = [str(tmp_path / f"img{i}.png") for i in range(5)]
    code = main(["inspect", "tinynet:build", *files, "-l", "2", "--channels", "0,1", "-k", "3", "--size", "16",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    with RunReader(tmp_path / "out" / "layers") as reader:
        assert reader.meta()["layers/top/2"]["channels"] == [0, 1]
    assert (tmp_path / "out" / "report.html").is_file()
    assert main(["inspect", "tinynet:build", *files, "-l", "4", "--size", "16", "--out", str(tmp_path / "x")]) == 2
