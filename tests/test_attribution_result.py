import json

import numpy as np
import pytest
import torch

from deepscope.attribution import AttributionMap, explain


def _result(maps):
    return AttributionMap(maps=maps, method="m", layer=None, target=[1, 2], params={"k": 3}, scores=torch.zeros(2))


def test_normalisations_are_explicit_and_exact():
    maps = torch.tensor([[[1.0, -4.0], [2.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]])
    result = _result(maps)
    assert torch.equal(result.normalized("abs")[0], torch.tensor([[0.25, 1.0], [0.5, 0.0]]))
    assert torch.equal(result.normalized("signed")[0], torch.tensor([[0.25, -1.0], [0.5, 0.0]]))
    assert torch.equal(result.normalized("none"), maps)
    clipped = result.normalized("percentile", percentile=50)
    assert clipped.max() == 1.0 and clipped[0, 0, 1] == 1.0  # the extreme pixel is clipped at the median
    # median of |m| of sample 0 is 1.5: values divided by it, clipped to [-1, 1]
    expected = torch.tensor([[1 / 1.5, -1.0], [1.0, 0.0]])
    torch.testing.assert_close(result.normalized("signed", percentile=50)[0], expected)
    assert torch.equal(result.normalized("minmax")[0], torch.tensor([[5 / 6, 0.0], [1.0, 4 / 6]]))
    assert torch.equal(result.normalized("minmax")[1], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="unknown normalisation"):
        result.normalized("range")
    with pytest.raises(ValueError, match="percentile must be"):
        result.normalized("abs", percentile=0)


def test_figures_show_signed_maps_clipped_and_others_min_max():
    signed, is_signed = _result(torch.tensor([[[1.0, -4.0], [2.0, 0.0]]] * 2)).for_display()
    assert is_signed and signed.min() == -1.0 and signed.max() <= 1.0
    offset, is_signed = _result(torch.tensor([[[5.0, 6.0], [7.0, 5.0]]] * 2)).for_display()
    assert not is_signed and torch.equal(offset[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))


def test_per_channel_maps_are_summed_for_display():
    maps = torch.ones(2, 3, 4, 4)
    assert torch.equal(_result(maps).spatial(), torch.full((2, 4, 4), 3.0))


def test_save_round_trip(tmp_path):
    result = _result(torch.randn(2, 5, 5))
    path = result.save(tmp_path / "maps")
    assert path.name == "maps.npz"
    data = np.load(path)
    np.testing.assert_array_equal(data["maps"], result.maps.numpy())
    meta = json.loads(str(data["meta"]))
    assert meta["method"] == "m" and meta["target"] == [1, 2] and meta["params"] == {"k": 3}


def test_jupyter_display_is_a_png(tiny_cnn, tiny_images):
    png = explain(tiny_cnn, tiny_images, "saliency")._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_records_provenance(tiny_cnn, tiny_images):
    result = explain(tiny_cnn, tiny_images, "saliency", target=[3, 4])
    assert result.method == "saliency" and result.target == [3, 4] and result.layer is None
    assert result.params == {"absolute": True} and "torch" in result.versions
    with torch.no_grad():
        expected = tiny_cnn.eval()(tiny_images)[[0, 1], [3, 4]]
    torch.testing.assert_close(result.scores, expected)


def test_overlay_blends_the_display_maps_onto_the_images(generator):
    images = torch.rand(2, 3, 4, 4, generator=generator)
    maps = torch.zeros(2, 4, 4)
    maps[:, 0, 0] = -1.0
    maps[:, 3, 3] = 2.0
    rgb = _result(maps).overlay(images, alpha=0.5)
    assert rgb.shape == (2, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    shown = images.permute(0, 2, 3, 1).numpy()
    low, high = shown.min(axis=(1, 2, 3), keepdims=True), shown.max(axis=(1, 2, 3), keepdims=True)
    shown = (shown - low) / (high - low)
    np.testing.assert_allclose(rgb[:, 1, 1], shown[:, 1, 1], atol=1e-6)  # a zero of a signed map: the image itself
    assert not np.allclose(rgb[:, 3, 3], shown[:, 3, 3])
    with pytest.raises(ValueError, match="3 images for 2 maps"):
        _result(maps).overlay(torch.rand(3, 3, 4, 4))
