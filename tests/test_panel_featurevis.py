"""The feature-visualisation panel's data functions on the quick tour's run, its routes over HTTP, and bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope.server import create_app
from deepscope.server._api import panels_impl
from deepscope.server.panels import featurevis
from deepscope.store import RunReader

RUN = "featurevis/featurevis"


def _decode(uri):
    import matplotlib.image

    assert uri.startswith("data:image/png;base64,")
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")[..., :3]


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


def test_available_only_on_feature_vis_runs(tour_root):
    for run, expected in ((RUN, True), ("shapes/layers-shapes", False), ("digits/cnn", False)):
        with RunReader(tour_root / run) as reader:
            assert featurevis.PANEL.available(reader) is expected, run
        assert ("featurevis" in [p["name"] for p in panels_impl(tour_root, run)["panels"]]) is expected, run


def test_results_list_the_recorded_objectives(tour_root):
    with RunReader(tour_root / RUN) as reader:
        meta = reader.meta()
        answer = featurevis.results_impl(reader)
    assert [r["title"] for r in answer["results"]] == meta["featurevis/results"]
    assert len(answer["results"]) == 3 and answer["description"] == meta["featurevis/description"]
    for result in answer["results"]:
        info = meta[f"featurevis/{result['index']}"]
        assert result["objective"] == info["objective"] and result["labels"] == info["labels"]


@pytest.mark.parametrize("index", [0, 2])
def test_result_images_curves_and_settings_match_the_store(tour_root, index):
    with RunReader(tour_root / RUN) as reader:
        info = reader.meta()[f"featurevis/{index}"]
        images = reader.tensor(f"featurevis/{index}/images", 0).astype(np.float64)
        curve = reader.tensor(f"featurevis/{index}/curve", 0).astype(np.float64)
        answer = featurevis.result_impl(reader, index=index)
    assert answer["index"] == index and answer["count"] == 3
    assert answer["title"] == info["title"] and answer["labels"] == info["labels"]
    assert len(answer["images"]) == len(images) == curve.shape[1] and answer["size"] == list(images.shape[2:])
    for uri, stored in zip(answer["images"], images, strict=True):  # as optimised: only clipped to [0, 1]
        np.testing.assert_allclose(_decode(uri), np.clip(stored.transpose(1, 2, 0), 0, 1), atol=1 / 255 + 1e-6)
    assert answer["steps"] == list(range(1, len(curve) + 1))
    np.testing.assert_allclose(answer["curves"], curve.T, rtol=1e-6)
    np.testing.assert_allclose(answer["mean"], curve.mean(1), rtol=1e-6)
    np.testing.assert_allclose(answer["final"], curve[-1], rtol=1e-6)
    settings = dict(answer["settings"])
    assert settings["steps"] == str(info["params"]["steps"]) and settings["lr"] == "0.05"
    assert settings["param"] == info["params"]["param"]
    if index == 0:
        assert settings["channels"] == ", ".join(map(str, info["params"]["channels"]))


def test_routes_and_bad_input(client):
    listed = client.get("/api/featurevis/results", params={"run": RUN})
    assert listed.status_code == 200 and len(listed.json()["results"]) == 3
    one = client.get("/api/featurevis/result", params={"run": RUN, "index": 1})
    assert one.status_code == 200 and one.json()["run"] == RUN and one.json()["title"].startswith("Untrained")
    json.loads(one.text, parse_constant=lambda name: pytest.fail(f"{name} in a JSON answer"))
    for index in (3, -1):
        missing = client.get("/api/featurevis/result", params={"run": RUN, "index": index})
        assert missing.status_code == 404 and "valid indices: 0..2" in missing.json()["detail"]
    assert client.get("/api/featurevis/result", params={"run": RUN, "index": "first"}).status_code == 422
    elsewhere = client.get("/api/featurevis/result", params={"run": "digits/cnn"})
    assert elsewhere.status_code == 404 and "holds no feature visualisation" in elsewhere.json()["detail"]
    assert client.get("/api/featurevis/results", params={"run": "digits/cnn"}).json()["results"] == []
