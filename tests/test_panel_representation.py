"""The representation panel's data functions on the quick tour's runs, checked against the stores, and its routes."""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope import plots
from deepscope._layer_plots import scaled_tile
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.projection import project_frames
from deepscope.server import create_app
from deepscope.server._api import panels_impl
from deepscope.server.panels import representation
from deepscope.server.panels.representation import PANEL, decision_impl, evolution_impl, frames_impl, index_impl
from deepscope.store import RunReader, RunWriter

WITH_DATA = ("toy2d/seed-0", "toy2d/seed-1", "digits/cnn", "digits/sigmoid-mlp")
WITHOUT = ("attention/minilm", "shapes/layers-shapes", "spurious/clean", "featurevis/featurevis")


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


def _reader(tour_root, run):
    return RunReader(tour_root / run)


def _png(uri: str) -> np.ndarray:
    import matplotlib.image

    assert uri.startswith("data:image/png;base64,")
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")


@pytest.mark.parametrize("run", WITH_DATA + WITHOUT)
def test_available_only_with_snapshots(tour_root, run):
    with _reader(tour_root, run) as reader:
        assert PANEL.available(reader) is (run in WITH_DATA)
    shown = [p["name"] for p in panels_impl(tour_root, run)["panels"]]
    assert ("representation" in shown) is (run in WITH_DATA)


def test_index_toy_matches_store(tour_root):
    with _reader(tour_root, "toy2d/seed-0") as reader:
        answer = index_impl(reader)
        meta = reader.meta()
        assert [layer["name"] for layer in answer["layers"]] == meta[TAGS.LAYERS] == ["bottleneck"]
        layer = answer["layers"][0]
        assert layer["steps"] == reader.tensor_steps("repr/bottleneck").tolist()
        assert layer["width"] == 2
        assert answer["class_names"] == meta[TAGS.CLASS_NAMES]
        assert answer["class_colors"][:2] == [plots.class_color(0), plots.class_color(1)]
        assert answer["class_symbols"][:2] == ["circle", "square"]  # the report's markers "o" and "s"
        assert answer["predictions"] is True
        accuracy = reader.scalars(TAGS.ACCURACY)
        assert answer["accuracy"]["steps"] == accuracy.steps.tolist()
        np.testing.assert_allclose(answer["accuracy"]["values"], accuracy.values)
        np.testing.assert_allclose(answer["accuracy"]["balanced"], reader.scalars(TAGS.BALANCED_ACCURACY).values)
        assert answer["majority_baseline"] == pytest.approx(meta[TAGS.MAJORITY_BASELINE])
        decision = answer["decision"]
        assert decision["steps"] == reader.tensor_steps(TAGS.GRID_SCORE).tolist()
        np.testing.assert_allclose(decision["extent"], meta[TAGS.GRID_EXTENT])
        np.testing.assert_allclose(decision["points"], reader.tensor(TAGS.PROBE_INPUTS, 0), atol=1e-4)
        assert decision["labels"] == reader.tensor(TAGS.PROBE_LABELS, 0).tolist()
        assert answer["evolution"] == []


def test_index_cnn_lists_evolution(tour_root):
    with _reader(tour_root, "digits/cnn") as reader:
        answer = index_impl(reader)
        info = reader.meta()["evolution/relu2"]
        assert answer["decision"] is None
        assert answer["layers"][0]["name"] == "embed"
        assert answer["layers"][0]["width"] == reader.tensor("repr/embed", 0).shape[1] == 64
        [evolution] = answer["evolution"]
        assert evolution["layer"] == "relu2"
        assert evolution["steps"] == reader.tensor_steps("evolution/relu2/patches").tolist()
        assert evolution["channels"] == info["channels"]
        assert evolution["field"] == info["field"]
        assert answer["class_names"] == [str(k) for k in range(10)]
        assert "pca" in answer["projections"]


def test_frames_of_a_two_unit_layer_are_its_units_zscored(tour_root):
    with _reader(tour_root, "toy2d/seed-0") as reader:
        answer = frames_impl(reader, layer="bottleneck")
        steps, values = reader.tensors("repr/bottleneck")
        pred_steps, preds = reader.tensors(TAGS.PROBE_PRED)
        labels = reader.tensor(TAGS.PROBE_LABELS, 0)
        accuracy = reader.scalars(TAGS.ACCURACY)
    assert answer["steps"] == steps.tolist() == pred_steps.tolist()
    assert answer["projection"] == "none" and answer["width"] == 2
    assert answer["axis_names"] == ["unit 1 (z-score)", "unit 2 (z-score)"]
    z = plots.zscore(np.stack(values))  # (F, N, 2): the units themselves, standardised per frame
    np.testing.assert_allclose(answer["points"], z, atol=6e-4)
    assert answer["labels"] == labels.tolist()
    assert answer["pred"] == np.stack(preds).tolist()
    np.testing.assert_allclose(answer["accuracy"], accuracy.values, atol=1e-6)  # pred == label agrees with the probe
    for axis, i in (("x", 0), ("y", 1)):
        low, high = answer["limits"][axis]
        assert low < z[..., i].min() and high > z[..., i].max()  # fixed over every frame, nothing leaves the view
        assert high - low == pytest.approx(1.1 * np.ptp(z[..., i]))


def test_frames_of_a_wide_layer_are_the_reports_pca_frames(tour_root):
    with _reader(tour_root, "digits/cnn") as reader:
        answer = frames_impl(reader, layer="embed", projection="pca")
        steps, values = reader.tensors("repr/embed")
        preds = reader.tensors(TAGS.PROBE_PRED)[1]
        labels = reader.tensor(TAGS.PROBE_LABELS, 0)
    expected = plots.zscore(project_frames(values, "pca"))
    assert answer["steps"] == steps.tolist()
    assert answer["axis_names"] == ["PC 1 (z-score)", "PC 2 (z-score)"]
    np.testing.assert_allclose(answer["points"], expected, atol=6e-4)
    np.testing.assert_allclose(answer["accuracy"], [(p == labels).mean() for p in preds])
    assert np.ptp(np.asarray(answer["points"])[-1, :, 0]) > 1  # a real spread, not a degenerate frame


def test_frames_are_cached_until_the_store_changes(tmp_path):
    folder = tmp_path / "live"
    rng = np.random.default_rng(0)
    with RunWriter(folder, name="live") as writer:
        writer.set_meta(TAGS.LAYERS, ["h"])
        for step in (0, 10):
            writer.add_tensor("repr/h", step, rng.normal(size=(30, 5)).astype(np.float32))
    with RunReader(folder) as reader:
        first = frames_impl(reader, layer="h")
        assert frames_impl(reader, layer="h") is first  # the same answer object: not recomputed
        assert first["pred"] is None and first["accuracy"] is None  # no predictions recorded
        assert first["labels"] == [0] * 30
        assert first["steps"] == [0, 10]
    with RunWriter(folder, name="live") as writer:
        writer.add_tensor("repr/h", 20, rng.normal(size=(30, 5)).astype(np.float32))
    with RunReader(folder) as reader:
        again = frames_impl(reader, layer="h")
        assert again is not first and again["steps"] == [0, 10, 20]
    assert len(representation._CACHE._entries) <= representation._CACHE.size


def test_frames_refuse_unknown_layer_and_projection(tour_root, monkeypatch):
    with _reader(tour_root, "digits/cnn") as reader:
        with pytest.raises(UnknownNameError, match="Valid: embed"):
            frames_impl(reader, layer="embedd")
        with pytest.raises(ValueError, match="unknown projection 'tsne'; valid: pca"):
            frames_impl(reader, layer="embed", projection="tsne")
        monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
        with pytest.raises(ValueError, match="umap-learn"):
            frames_impl(reader, layer="embed", projection="umap")


def test_decision_map_matches_store(tour_root):
    with _reader(tour_root, "toy2d/seed-1") as reader:
        step = int(reader.tensor_steps(TAGS.GRID_SCORE)[3])
        answer = decision_impl(reader, step=step)
        grid = reader.tensor(TAGS.GRID_SCORE, step)
        extent = reader.meta()[TAGS.GRID_EXTENT]
    assert answer["step"] == step
    np.testing.assert_allclose(answer["scores"], grid, atol=6e-4)
    np.testing.assert_allclose(answer["x"], np.linspace(extent[0], extent[1], grid.shape[1]))
    np.testing.assert_allclose(answer["y"], np.linspace(extent[2], extent[3], grid.shape[0]))
    assert len(answer["colors"]) == 10 and all(c.startswith("#") for c in answer["colors"])
    assert answer["positive"] == "blue"


def test_decision_map_errors(tour_root):
    with _reader(tour_root, "toy2d/seed-0") as reader, pytest.raises(LookupError, match="nearest stored steps: 0, 20"):
        decision_impl(reader, step=7)
    with _reader(tour_root, "digits/cnn") as reader, pytest.raises(UnknownNameError, match="input/grid_score"):
        decision_impl(reader, step=0)


def test_evolution_tiles_match_store(tour_root):
    with _reader(tour_root, "digits/cnn") as reader:
        step = int(reader.tensor_steps("evolution/relu2/patches")[-1])
        answer = evolution_impl(reader, layer="relu2", step=step)
        patches = reader.tensor("evolution/relu2/patches", step).astype(np.float32)
        projections = reader.tensor("evolution/relu2/projections", step)
        scores = reader.tensor("evolution/relu2/scores", step)
        images = reader.tensor("evolution/relu2/images", step)
        labels = reader.tensor(TAGS.PROBE_LABELS, 0)
        channels = reader.meta()["evolution/relu2"]["channels"]
    assert answer["step"] == step
    assert [t["channel"] for t in answer["tiles"]] == channels
    np.testing.assert_allclose([t["score"] for t in answer["tiles"]], scores, rtol=1e-6)
    assert [t["image"] for t in answer["tiles"]] == images.tolist()
    assert [t["label"] for t in answer["tiles"]] == labels[images].tolist()
    inside = np.ones(patches.shape[-2:], dtype=bool)
    for i in (0, len(channels) - 1):
        for key, source, signed in (("patch", patches, False), ("projection", projections, True)):
            png = _png(answer["tiles"][i][key])
            assert png.shape[:2] == patches.shape[-2:]
            tile = scaled_tile(source[i], inside, signed=signed)
            np.testing.assert_allclose(png[..., 0], tile, atol=2 / 255)  # the colour map's 8-bit bins


def test_evolution_errors(tour_root):
    with _reader(tour_root, "digits/cnn") as reader:
        with pytest.raises(UnknownNameError, match="Valid: relu2"):
            evolution_impl(reader, layer="relu3", step=0)
        with pytest.raises(LookupError, match="no step 1000"):
            evolution_impl(reader, layer="relu2", step=1000)


def test_routes(client, tour_root):
    index = client.get("/api/representation/index", params={"run": "digits/cnn"})
    assert index.status_code == 200 and index.json()["run"] == "digits/cnn"
    frames = client.get("/api/representation/frames", params={"run": "digits/cnn", "layer": "embed"})
    assert frames.status_code == 200 and len(frames.json()["points"]) == len(index.json()["layers"][0]["steps"])
    evolution = client.get("/api/representation/evolution", params={"run": "digits/cnn", "layer": "relu2", "step": 0})
    assert evolution.status_code == 200 and len(evolution.json()["tiles"]) == 8
    decision = client.get("/api/representation/decision", params={"run": "toy2d/seed-0", "step": 20})
    assert decision.status_code == 200 and decision.json()["step"] == 20
    assert "NaN" not in frames.text and "Infinity" not in decision.text


@pytest.mark.parametrize(
    ("route", "params", "status", "message"),
    [
        ("frames", {"run": "digits/cnn", "layer": "nope"}, 404, "unknown representation layer 'nope'"),
        ("frames", {"run": "digits/cnn", "layer": "embed", "projection": "tsne"}, 400, "valid: pca"),
        ("frames", {"run": "digits/cnn"}, 422, "layer"),
        ("decision", {"run": "toy2d/seed-0", "step": 5}, 404, "nearest stored steps"),
        ("decision", {"run": "toy2d/seed-0", "step": -1}, 404, "no step -1"),
        ("decision", {"run": "digits/cnn", "step": 0}, 404, "input/grid_score"),
        ("decision", {"run": "toy2d/seed-0", "step": "last"}, 422, "step"),
        ("evolution", {"run": "digits/cnn", "layer": "relu9", "step": 0}, 404, "Valid: relu2"),
        ("evolution", {"run": "digits/cnn", "layer": "relu2", "step": 99999}, 404, "nearest stored steps"),
        ("index", {"run": "no/such/run"}, 404, "no run"),
    ],
)
def test_bad_input_is_refused_with_a_helpful_message(client, route, params, status, message):
    response = client.get(f"/api/representation/{route}", params=params)
    assert response.status_code == status
    assert message in response.text
