"""The attention panel's data routes: examples, one layer's heads, rollout, entropy, the model-view figure."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope.errors import UnknownNameError
from deepscope.server import create_app
from deepscope.server.panels.attention import (
    PANEL,
    entropy_impl,
    examples_impl,
    layer_impl,
    model_view_impl,
    rollout_impl,
)
from deepscope.store import RunReader, RunWriter

RUN = "attention/minilm"


@pytest.fixture(scope="module")
def minilm(tour_root):
    with RunReader(tour_root / RUN) as reader:
        yield reader


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


def _weights(seed, layers=2, heads=3, tokens=4):
    w = np.random.default_rng(seed).random((layers, heads, tokens, tokens)) ** 3
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def bare(tmp_path):
    """A run written with RunWriter: two examples (steps 0 and 7), tokens per example, no entropy, no view."""
    with RunWriter(tmp_path / "bare", name="bare") as writer:
        writer.set_meta("attention/tokens", [["a", "b", "c", "d"], ["w", "x", "y", "z"]])
        for step, seed in ((0, 0), (7, 1)):
            writer.add_tensor("attention/weights", step, _weights(seed).astype(np.float16))
            writer.add_tensor("attention/rollout", step, np.eye(4, dtype=np.float32))
    with RunReader(tmp_path / "bare") as reader:
        yield reader


# ---------------------------------------------------------------------------------------- the tour's run


def test_examples_describe_the_recorded_text(minilm):
    meta = minilm.meta()
    tokens = meta["attention/tokens"]
    answer = examples_impl(minilm)
    assert answer["examples"] == [{"example": 0, "tokens": len(tokens), "text": " ".join(tokens)}]
    assert answer["layers"] == meta["attention/layers"]
    assert answer["heads"] == minilm.tensor("attention/weights", 0).shape[1] == 12
    assert answer["view"] == meta["attention/view"]


def test_layer_holds_every_head_of_the_chosen_layer(minilm):
    stored = minilm.tensor("attention/weights", 0).astype(np.float64)  # (L, H, T, T)
    view = minilm.meta()["attention/view"]
    default = layer_impl(minilm)
    assert default["layer"] == view["layer"] and default["name"] == f"layer {view['layer']}"
    assert default["tokens"] == minilm.meta()["attention/tokens"]
    got = np.array(default["weights"])
    assert got.shape == stored.shape[1:]
    np.testing.assert_allclose(got, stored[view["layer"]], atol=5.1e-5)  # rounded to 4 decimals
    np.testing.assert_allclose(got.sum(-1), 1, atol=1e-2)  # rows are distributions (float16 storage)
    first = np.array(layer_impl(minilm, example=0, layer=0)["weights"])
    np.testing.assert_allclose(first, stored[0], atol=5.1e-5)
    assert np.abs(first - got).max() > 0.1  # another layer, other numbers


@pytest.mark.parametrize("layer", [-1, 6, 99])
def test_layer_out_of_range_says_what_is_valid(minilm, layer):
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.5 \(layer 0, .*layer 5\), got "):
        layer_impl(minilm, layer=layer)


def test_unknown_example_lists_the_recorded_ones(minilm):
    for impl in (layer_impl, rollout_impl, entropy_impl, model_view_impl):
        with pytest.raises(UnknownNameError, match=r"unknown attention example '3'.*Valid: 0\."):
            impl(minilm, example=3)


def test_rollout_is_the_stored_matrix(minilm):
    stored = minilm.tensor("attention/rollout", 0)
    answer = rollout_impl(minilm, example=0)
    got = np.array(answer["rollout"])
    np.testing.assert_allclose(got, stored, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1, atol=1e-4)
    assert answer["tokens"] == minilm.meta()["attention/tokens"]
    assert got[0].argmax() == 0  # [CLS] draws mostly on itself through the residual stream


def test_entropy_is_the_stored_table(minilm):
    stored = minilm.tensor("attention/entropy", 0)
    answer = entropy_impl(minilm)
    assert answer["layers"] == minilm.meta()["attention/layers"]
    np.testing.assert_allclose(answer["entropy"], stored, atol=1e-6)
    assert answer["uniform"] == pytest.approx(math.log(len(minilm.meta()["attention/tokens"])))
    view = minilm.meta()["attention/view"]
    most_focused = np.argsort(stored[view["layer"]])[:3]
    assert sorted(view["heads"]) == sorted(most_focused.tolist())  # what the head view shows by default


def test_model_view_is_a_png_of_every_head(client):
    """The report's figure through its route (matplotlib renders once: the slowest route)."""
    import matplotlib.image

    answer = client.get("/api/attention/model_view", params={"run": RUN, "example": 0}).json()
    prefix = "data:image/png;base64,"
    assert answer["run"] == RUN and answer["example"] == 0 and answer["figure"].startswith(prefix)
    png = matplotlib.image.imread(io.BytesIO(base64.b64decode(answer["figure"][len(prefix) :])), format="png")
    assert png.shape[0] > 300 and png.shape[1] > 600 and png.std() > 0.05  # 6 rows × 12 thumbnails, not blank


def test_available_only_where_attention_was_recorded(tour_root):
    expected = {RUN: True, "attention/minilm-sentiment": False, "digits/cnn": False, "toy2d/seed-0": False}
    for run, available in expected.items():
        with RunReader(tour_root / run) as reader:
            assert PANEL.available(reader) is available, run


# ---------------------------------------------------------------------------------------- a hand-made run


def test_several_examples_with_their_own_tokens(bare):
    answer = examples_impl(bare)
    assert [e["example"] for e in answer["examples"]] == [0, 7]
    assert [e["text"] for e in answer["examples"]] == ["a b c d", "w x y z"]
    assert answer["layers"] == ["layer 0", "layer 1"] and answer["heads"] == 3  # names default to positions
    second = layer_impl(bare, example=7, layer=1)
    assert second["tokens"] == ["w", "x", "y", "z"]
    np.testing.assert_allclose(second["weights"], _weights(1)[1], atol=1e-3)  # float16 storage
    assert np.abs(np.array(second["weights"]) - _weights(0)[1]).max() > 0.05


def test_missing_entropy_and_view_are_derived_from_the_weights(bare):
    def entropy(w):  # (L, H) mean row entropy, 0·log 0 = 0
        return -np.where(w > 0, w * np.log(np.where(w > 0, w, 1)), 0).sum(-1).mean(-1)

    late = entropy(bare.tensor("attention/weights", 7).astype(np.float64))
    np.testing.assert_allclose(entropy_impl(bare, example=7)["entropy"], late, atol=1e-5)
    first = entropy(bare.tensor("attention/weights", 0).astype(np.float64))
    view = examples_impl(bare)["view"]
    assert view == {"layer": 1, "heads": np.argsort(first[1], kind="stable")[:3].tolist()}  # as the report


def test_tokens_that_do_not_match_the_weights_become_positions(tmp_path):
    with RunWriter(tmp_path / "odd") as writer:
        writer.set_meta("attention/tokens", ["only", "three", "tokens"])
        writer.set_meta("attention/layers", ["just one name"])
        writer.add_tensor("attention/weights", 0, _weights(2))
    with RunReader(tmp_path / "odd") as reader:
        assert layer_impl(reader, layer=1)["tokens"] == ["0", "1", "2", "3"]
        assert examples_impl(reader)["layers"] == ["layer 0", "layer 1"]
        with pytest.raises(UnknownNameError, match="tensor tag 'attention/rollout'"):
            rollout_impl(reader)


def test_not_available_without_weights(tmp_path):
    with RunWriter(tmp_path / "scalars") as writer:
        writer.add_scalar("train/loss", 0, 1.0)
        writer.set_meta("attention/tokens", ["a"])  # tokens alone are nothing to draw
    with RunReader(tmp_path / "scalars") as reader:
        assert PANEL.available(reader) is False
        with pytest.raises(UnknownNameError):
            examples_impl(reader)


# ---------------------------------------------------------------------------------------- HTTP


def test_every_route_answers_json(client, minilm):
    assert {route.path for route in PANEL.routes} == {"examples", "layer", "rollout", "entropy", "model_view"}
    panels = client.get("/api/panels", params={"run": RUN}).json()["panels"]
    assert {"name": "attention", "title": "Attention"}.items() <= next(
        p for p in panels if p["name"] == "attention"
    ).items()
    examples = client.get("/api/attention/examples", params={"run": RUN})
    assert examples.status_code == 200 and examples.json() == {"run": RUN, **examples_impl(minilm)}
    layer = client.get("/api/attention/layer", params={"run": RUN, "example": 0, "layer": 2}).json()
    assert layer["run"] == RUN and layer["layer"] == 2 and layer == {"run": RUN, **layer_impl(minilm, layer=2)}
    rollout = client.get("/api/attention/rollout", params={"run": RUN}).json()
    np.testing.assert_allclose(rollout["rollout"], minilm.tensor("attention/rollout", 0), atol=1e-6)
    entropy = client.get("/api/attention/entropy", params={"run": RUN, "example": 0}).json()
    np.testing.assert_allclose(entropy["entropy"], minilm.tensor("attention/entropy", 0), atol=1e-6)
    # model_view: test_model_view_is_a_png_of_every_head


def test_bad_input_is_refused_with_a_reason(client):
    answer = client.get("/api/attention/layer", params={"run": RUN, "layer": 9})
    assert answer.status_code == 400 and "layer must be in 0..5" in answer.json()["detail"]
    answer = client.get("/api/attention/rollout", params={"run": RUN, "example": 12})
    assert answer.status_code == 404 and "unknown attention example '12'" in answer.json()["detail"]
    assert "Valid: 0." in answer.json()["detail"]
    answer = client.get("/api/attention/examples", params={"run": "digits/cnn"})  # a run without attention
    assert answer.status_code == 404 and "attention/weights" in answer.json()["detail"]
    assert client.get("/api/attention/layer", params={"run": RUN, "layer": "last"}).status_code == 422
    assert client.get("/api/attention/entropy", params={"run": "no/such/run"}).status_code == 404
