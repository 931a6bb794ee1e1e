"""``deepscope featurevis``: it records the library's atlas, its options reach the library, errors are one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from deepscope._images import IMAGENET_MEAN, IMAGENET_STD
from deepscope.cli import main
from deepscope.featurevis import feature_vis_grid
from deepscope.featurevis.objectives import OUTPUT
from deepscope.featurevis.param import color_correlation
from deepscope.store import RunReader

FACTORY = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    (tmp_path / "fvmodels.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import fvmodels

    return fvmodels.tiny


def _stored_images(run):
    with RunReader(run) as reader:
        meta = reader.meta()
        return reader.tensor("featurevis/0/images", 0).astype(np.float32), meta["featurevis/0"]


def test_a_channel_atlas_is_the_librarys_and_lands_in_a_run_a_figure_and_the_report(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["featurevis", "fvmodels:tiny", "-l", "2", "--channels", "0,1,5", "--steps", "6", "--size", "16"]
    assert main([*args, "--seed", "3", "--per-batch", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()[:3]] == ["channel 0", "channel 1", "channel 5"]
    images, meta = _stored_images(out / "featurevis")
    assert meta["labels"] == ["channel 0", "channel 1", "channel 5"] and meta["params"]["steps"] == 6

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    expected = feature_vis_grid(
        tiny(), "2", [0, 1, 5], per_batch=2, size=16, steps=6, generator=torch.Generator().manual_seed(3),
        preprocess=lambda x: (x - mean) / std,
    )  # fmt: skip
    np.testing.assert_allclose(images, expected.images.numpy(), atol=1e-3)  # stored as float16
    assert (out / "featurevis.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "fvmodels:tiny: feature visualisation" in page and "channels of 2" in page


def test_class_logits_in_the_colours_of_given_images(tiny, tmp_path, capsys):
    photo = tmp_path / "warm.png"
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.uniform(0.6, 1, (16, 16)), rng.uniform(0.2, 0.6, (16, 16)), rng.uniform(0, 0.3, (16, 16))])
    Image.fromarray((255 * pixels.transpose(1, 2, 0)).astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    args = ["featurevis", "fvmodels:tiny", "--classes", "0,2", "--steps", "5", "--size", "16", "--no-normalize"]
    assert main([*args, "--color-from", str(photo), "-o", str(out)]) == 0
    assert "class 2: objective" in capsys.readouterr().out
    images, meta = _stored_images(out / "featurevis")
    assert meta["labels"] == ["class 0", "class 2"]

    colour = color_correlation(torch.from_numpy(np.asarray(Image.open(photo), np.float32) / 255).permute(2, 0, 1)[None])
    expected = feature_vis_grid(tiny(), OUTPUT, [0, 2], size=16, steps=5, color=colour)
    np.testing.assert_allclose(images, expected.images.numpy(), atol=1e-3)
    default = feature_vis_grid(tiny(), OUTPUT, [0, 2], size=16, steps=5)
    assert np.abs(images - default.images.numpy()).max() > 1e-2  # the colour matrix changed the images


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --layer (to see its channels) or --classes (to see class logits)"),
        (["-l", "2", "--classes", "1"], "not both"),
        (["-l", "2", "--channels", "0,9"], "channel 9 does not exist: '2' has 6 channels (0 to 5)"),
        (["--classes", "3"], "class 3 does not exist: the model output has 3 classes (0 to 2)"),
        (["-l", "2", "--channels", "0-3"], "--channels expects indices separated by commas, like 0,3,7"),
        (["-l", "2", "--unit", "pixel"], "unknown unit 'pixel'; valid: 'channel', 'neuron'"),
        (["-l", "22"], "Closest valid names: '2'"),
        (["--classes", "1", "--unit", "neuron"], "unit='neuron' needs a layer with positions"),
        (["-l", "2", "--param", "voxels"], "unknown parameterisation 'voxels'"),
    ],
)
def test_bad_requests_are_one_line(tiny, tmp_path, capsys, extra, message):
    assert main(["featurevis", "fvmodels:tiny", "--steps", "1", "--size", "16", "-o", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "featurevis").exists()
