"""The layers panel's data functions on the quick tour's layer runs, every route over HTTP, and bad input."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope.errors import UnknownNameError
from deepscope.server import create_app
from deepscope.server._api import NotFound, panels_impl
from deepscope.server.panels import layers
from deepscope.store import RunReader

SHAPES = "shapes/layers-shapes"
PHOTOS = "shapes/layers-photos"


def _reader(root, run):
    return RunReader(root / run)


def _decode(uri):
    """A PNG data URI as an (H, W, 3) float array in [0, 1]."""
    import matplotlib.image

    assert uri.startswith("data:image/png;base64,")
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")[..., :3]


def _no_constant(name):
    raise AssertionError(f"{name} in a JSON answer")


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


def test_available_only_on_layer_runs(tour_root):
    for run, expected in ((SHAPES, True), (PHOTOS, True), ("digits/cnn", False), ("featurevis/featurevis", False)):
        with _reader(tour_root, run) as reader:
            assert layers.PANEL.available(reader) is expected, run
        names = [p["name"] for p in panels_impl(tour_root, run)["panels"]]
        assert ("layers" in names) is expected, run


def test_index_matches_the_store(tour_root):
    with _reader(tour_root, SHAPES) as reader:
        meta = reader.meta()
        answer = layers.index_impl(reader)
        filters = reader.tensor("layers/filters", 0)
    assert [layer["name"] for layer in answer["layers"]] == meta["layers/top"]
    for layer in answer["layers"]:
        info = meta[f"layers/top/{layer['name']}"]
        assert layer["maps"] and layer["top"] and layer["k"] == info["k"] == 9
        assert layer["channels"] == info["channels"] and layer["field"] == info["field"]
    assert answer["images"] == meta["layers/images"] and answer["description"] == meta["layers/description"]
    assert answer["filters"] == {**meta["layers/filters"], "shape": list(filters.shape)}
    assert answer["stats"]["columns"] == list(layers.STAT_COLUMNS)
    for row, stored in zip(answer["stats"]["rows"], meta["layers/stats"], strict=True):
        for value, column in zip(row, layers.STAT_COLUMNS, strict=True):
            expected = stored[column]
            if isinstance(expected, float) and math.isnan(expected):
                assert value is None  # NaN saturation (ReLU is unbounded) is sent as null
            else:
                assert value == expected
    assert answer["invariance"] == meta["layers/invariance"] == ["translation", "scale", "rotation"]
    assert len(answer["occlusion"]) == meta["layers/occlusion"] == 2
    for study in answer["occlusion"]:
        info = meta[f"layers/occlusion/{study['index']}"]
        assert study["target_name"] == info["class_names"][info["target"]] and study["channel"] == info["channel"]


def test_maps_are_the_stored_feature_maps(tour_root):
    with _reader(tour_root, SHAPES) as reader:
        stored = reader.tensor("layers/example/features.relu3", 0).astype(np.float64)
        answer = layers.maps_impl(reader, layer="features.relu3")
        few = layers.maps_impl(reader, layer="features.relu3", limit=5)
    sent = np.array(answer["maps"], dtype=np.float64)
    assert sent.shape == stored.shape == (answer["channels"], answer["height"], answer["width"])
    assert answer["shown"] == answer["channels"] == 64
    np.testing.assert_allclose(sent, stored, atol=1e-4 * np.abs(stored).max())  # 5 significant digits
    assert answer["min"] == pytest.approx(stored.min()) and answer["max"] == pytest.approx(stored.max())
    assert few["shown"] == 5 and len(few["maps"]) == 5 and few["channels"] == 64
    assert few["max"] == pytest.approx(stored[:5].max())


def test_top_units_match_the_store(tour_root):
    with _reader(tour_root, PHOTOS) as reader:
        base = "layers/top/features.relu2"
        scores = reader.tensor(f"{base}/scores", 0)
        indices = reader.tensor(f"{base}/indices", 0)
        patches = reader.tensor(f"{base}/patches", 0).astype(np.float64)
        inside = reader.tensor(f"{base}/inside", 0).astype(bool)
        answer = layers.top_impl(reader, layer="features.relu2")
    assert answer["k"] == 9 and answer["projections"] is True
    assert [unit["channel"] for unit in answer["units"]] == list(range(8))
    h, w = patches.shape[-2:]
    for b, unit in enumerate(answer["units"]):
        np.testing.assert_allclose(unit["scores"], scores[b], rtol=1e-6)
        assert unit["indices"] == indices[b].tolist()
        assert list(unit["scores"]) == sorted(unit["scores"], reverse=True)  # best first
        mosaic = _decode(unit["patches"])
        assert mosaic.shape == (3 * h + 2, 3 * w + 2, 3)  # 3 × 3 tiles, 1-px white gaps
        assert _decode(unit["projections"]).shape == mosaic.shape
    # the first tile of channel 0 is its best patch stretched to [0, 1] inside the image, grey outside
    p, mask = patches[0, 0].transpose(1, 2, 0), inside[0, 0]
    expected = np.where(mask[..., None], (p - p[mask].min()) / (p[mask].max() - p[mask].min()), 0.75)
    np.testing.assert_allclose(_decode(answer["units"][0]["patches"])[:h, :w], expected, atol=1 / 255 + 1e-6)


def test_unit_enlarges_one_channel(tour_root):
    with _reader(tour_root, SHAPES) as reader:
        base = "layers/top/features.relu3"
        scores = reader.tensor(f"{base}/scores", 0)
        inside = reader.tensor(f"{base}/inside", 0).astype(bool)
        patches = reader.tensor(f"{base}/patches", 0).astype(np.float64)
        answer = layers.unit_impl(reader, layer="features.relu3", channel=5)
        with pytest.raises(NotFound, match=r"recorded channels: \[0, 1, 2, 3, 4, 5, 6, 7\]"):
            layers.unit_impl(reader, layer="features.relu3", channel=40)
    assert answer["channel"] == 5 and answer["k"] == 9 == len(answer["patches"]) == len(answer["projections"])
    np.testing.assert_allclose(answer["scores"], scores[5], rtol=1e-6)
    np.testing.assert_allclose(answer["inside"], inside[5].reshape(9, -1).mean(1))
    assert any(share < 1 for share in answer["inside"])  # a 35-px field at the border leaves the 64-px image
    r = int(np.argmin(answer["inside"]))
    tile = _decode(answer["patches"][r])
    assert tile.shape == (35, 35, 3)
    assert np.allclose(tile[~inside[5, r]], 0.75, atol=1 / 255)  # outside the image: light grey
    p, mask = patches[5, r].transpose(1, 2, 0), inside[5, r]
    expected = (p - p[mask].min()) / (p[mask].max() - p[mask].min())
    np.testing.assert_allclose(tile[mask], expected[mask], atol=1 / 255 + 1e-6)


def test_filters_figure_and_scale(tour_root):
    with _reader(tour_root, SHAPES) as reader:
        weights = reader.tensor("layers/filters", 0)
        shared = layers.filters_impl(reader)
        own = layers.filters_impl(reader, normalize="per_filter")
        with pytest.raises(ValueError, match="shared, per_filter"):
            layers.filters_impl(reader, normalize="global")
    assert shared["layer"] == "features.conv1" and shared["normalize"] == "shared" and own["normalize"] == "per_filter"
    assert shared["shape"] == list(weights.shape) == [16, 3, 5, 5]
    assert shared["min"] == pytest.approx(weights.min()) and shared["max"] == pytest.approx(weights.max())
    assert _decode(shared["figure"]).shape[1] > 500 and shared["figure"] != own["figure"]


def test_occlusion_study(tour_root):
    with _reader(tour_root, SHAPES) as reader:
        info = reader.meta()["layers/occlusion/1"]
        probability = reader.tensor("layers/occlusion/1/probability", 0)
        answer = layers.occlusion_impl(reader, index=1)
        with pytest.raises(IndexError, match=r"valid indices: 0\.\.1"):
            layers.occlusion_impl(reader, index=2)
        with pytest.raises(IndexError, match=r"valid indices: 0\.\.1"):
            layers.occlusion_impl(reader, index=-1)
    assert answer["count"] == 2 and answer["index"] == 1
    for key in ("layer", "channel", "target", "window", "stride", "baseline", "worst"):
        assert answer[key] == info[key], key
    assert answer["target_name"] == info["class_names"][info["target"]]
    assert answer["lowest_probability"] == pytest.approx(float(probability.min()))
    assert _decode(answer["figure"]).shape[1] > 1000  # the report's five-panel figure


def test_invariance_curves(tour_root):
    with _reader(tour_root, SHAPES) as reader:
        base = "layers/invariance/rotation"
        info = reader.meta()[base]
        values = reader.tensor(f"{base}/values", 0)
        distance = reader.tensor(f"{base}/distance/1", 0)
        probability = reader.tensor(f"{base}/probability", 0)
        predicted = reader.tensor(f"{base}/predicted", 0)
        labels = reader.tensor(f"{base}/labels", 0)
        answer = layers.invariance_impl(reader, transform="rotation")
        with pytest.raises(UnknownNameError, match="rotation"):
            layers.invariance_impl(reader, transform="rotate")
    assert answer["unit"] == "rotation (degrees)" and answer["layers"] == info["layers"]
    np.testing.assert_allclose(answer["values"], values)
    np.testing.assert_allclose(answer["distances"][1], distance.T, rtol=1e-6)
    np.testing.assert_allclose(answer["probability"], probability.T, rtol=1e-6)
    assert answer["labels"] == labels.tolist()
    assert answer["label_names"] == [info["class_names"][k] for k in labels]
    assert answer["wrong"] == (predicted != labels[None, :]).T.tolist()
    assert answer["distances"][0][0][0] == pytest.approx(0.0, abs=1e-4)  # no rotation: the same features


def test_every_route_over_http(client):
    for path, params in (
        ("index", {}),
        ("maps", {"layer": "features.relu2"}),
        ("top", {"layer": "features.relu2"}),
        ("unit", {"layer": "features.relu2", "channel": 0}),
        ("filters", {"normalize": "per_filter"}),
        ("occlusion", {"index": 0}),
        ("invariance", {"transform": "scale"}),
    ):
        response = client.get(f"/api/layers/{path}", params={"run": SHAPES, **params})
        assert response.status_code == 200, (path, response.text)
        assert json.loads(response.text, parse_constant=_no_constant)["run"] == SHAPES  # strict JSON: no NaN
    maps = client.get("/api/layers/maps", params={"run": PHOTOS, "layer": "features.relu3", "limit": 3}).json()
    assert maps["shown"] == 3 and maps["height"] == 8


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("maps", {"layer": "features.relu9"}, 404, "Did you mean: features.relu"),
        ("maps", {"layer": "features.relu2", "limit": 0}, 400, "limit must be between 1 and 256"),
        ("maps", {"layer": "features.relu2", "limit": "many"}, 422, ""),
        ("top", {"layer": "fc"}, 404, "Valid: features.relu2, features.relu3"),
        ("unit", {"layer": "features.relu2", "channel": 12}, 404, "recorded channels: [0, 1"),
        ("unit", {"layer": "features.relu2"}, 422, ""),
        ("filters", {"normalize": "RGB"}, 400, "normalize must be one of shared, per_filter"),
        ("occlusion", {"index": 7}, 404, "valid indices: 0..1"),
        ("invariance", {"transform": "shear"}, 404, "Valid: rotation, scale, translation"),
    ],
)
def test_bad_input_is_refused_with_a_helpful_message(client, path, params, status, message):
    response = client.get(f"/api/layers/{path}", params={"run": SHAPES, **params})
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"])


def test_runs_without_layer_views(client):
    assert client.get("/api/layers/filters", params={"run": "digits/cnn"}).status_code == 404
    assert client.get("/api/layers/top", params={"run": "digits/cnn", "layer": "x"}).status_code == 404
    photos = client.get("/api/layers/occlusion", params={"run": PHOTOS}).json()
    assert "holds no occlusion study" in photos["detail"]
    assert client.get("/api/layers/index", params={"run": PHOTOS}).json()["invariance"] == []
    assert client.get("/api/layers/index", params={"run": "no/such"}).status_code == 404
