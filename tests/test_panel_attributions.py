"""The attributions panel: every ``*_impl`` against what the store holds, every route, bad input, availability."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from conftest import build_tiny_cnn
from deepscope._attribution_plots import as_rgb, overlay
from deepscope._tags import TAGS
from deepscope.attribution import compare
from deepscope.errors import UnknownNameError
from deepscope.server import create_app
from deepscope.server._api import panels_impl
from deepscope.server.panels.attributions import (
    PANEL,
    example_impl,
    gallery_impl,
    index_impl,
    sanity_impl,
    scores_impl,
    text_impl,
)
from deepscope.store import RunReader, RunWriter
from deepscope.text import TokenAttribution

P = TAGS.ATTRIBUTION
METHODS_RUN = "shapes/attribution"
TEXT_RUN = "attention/minilm-sentiment"
WITHOUT = ("digits/cnn", "toy2d/seed-0", "spurious/biased", "shapes/layers-shapes", "featurevis/featurevis")


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    """A sanity-checked comparison on a tiny CNN, a text run with a WordPiece continuation, a hand-written table."""
    root = tmp_path_factory.mktemp("attr")
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    comparison = compare(
        build_tiny_cnn(), images, methods=["saliency", "gradcam", "guided_backprop"],
        metrics=("sanity", "deletion", "insertion"), target=[1, 2], captions=["first", "second"],
        generator=torch.Generator().manual_seed(0), steps=8,
    )  # fmt: skip
    comparison.record(root / "sanity", name="sanity")
    TokenAttribution(
        scores=(torch.tensor([0.0, 0.5, -2.0, 1.0]),), tokens=(("[CLS]", "walk", "##ing", "bad"),), target=(1,),
        predicted=(1,), probabilities=torch.tensor([[0.25, 0.75]]), method="saliency", class_names=("neg", "pos"),
    ).record(root / "text")  # fmt: skip
    table = [
        {"method": "a", "deletion_auc": 0.1, "insertion_auc": 0.9, "sanity": "fail", "seconds": 1.0},
        {"method": "b", "deletion_auc": 0.3, "insertion_auc": 0.7, "sanity": "pass", "seconds": 2.0},
        {"method": "c", "deletion_auc": 0.2, "insertion_auc": 0.7, "sanity": None, "seconds": 0.5},
    ]
    with RunWriter(root / "table", name="table") as writer:
        writer.add_tensor(f"{P}/images", 0, np.zeros((1, 4, 4, 3), np.float32))
        for method in "abc":
            writer.add_tensor(f"{P}/{method}/maps", 0, np.zeros((1, 4, 4), np.float16))
        writer.set_meta(f"{P}/methods", list("abc"))
        writer.set_meta(f"{P}/table", table)
    return root


def _read(root, run):
    return RunReader(root / run)


def _png(uri: str) -> np.ndarray:
    import matplotlib.image

    assert uri.startswith("data:image/png;base64,")
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")[..., :3]


def test_availability(tour_root, own_root):
    for run in (METHODS_RUN, TEXT_RUN):
        with _read(tour_root, run) as reader:
            assert PANEL.available(reader), run
        assert "attributions" in [p["name"] for p in panels_impl(tour_root, run)["panels"]]
    for run in WITHOUT:
        with _read(tour_root, run) as reader:
            assert not PANEL.available(reader), run
        assert "attributions" not in [p["name"] for p in panels_impl(tour_root, run)["panels"]]
    with _read(own_root, "sanity") as reader:
        assert PANEL.available(reader)


def test_index_matches_the_store(tour_root):
    with _read(tour_root, METHODS_RUN) as reader:
        meta, images = reader.meta(), reader.tensor(f"{P}/images", 0)
        answer = index_impl(reader)
    assert [m["name"] for m in answer["methods"]] == meta[f"{P}/methods"] and len(answer["methods"]) == 15
    assert [m["signed"] for m in answer["methods"]] == [meta[f"{P}/{m}/signed"] for m in meta[f"{P}/methods"]]
    assert answer["examples"] == images.shape[0] == 3 and answer["captions"] == meta[f"{P}/captions"]
    assert answer["notes"] == list(meta[f"{P}/notes"].values()) and not answer["sanity"] and not answer["text"]
    with _read(tour_root, TEXT_RUN) as reader:
        assert index_impl(reader) | {"text": None} == {"methods": [], "examples": 0, "captions": [], "notes": [],
                                                       "sanity": False, "text": None}  # fmt: skip
        assert index_impl(reader)["text"]


@pytest.mark.parametrize("method", ["integrated_gradients", "gradcam"])  # signed, magnitude
def test_gallery_shows_the_reports_overlays_and_scores(tour_root, method):
    with _read(tour_root, METHODS_RUN) as reader:
        meta = reader.meta()
        images = as_rgb(reader.tensor(f"{P}/images", 0))
        maps = reader.tensor(f"{P}/{method}/maps", 0).astype(np.float32)
        stored = {k: reader.tensor(f"{P}/{method}/{k}", 0) for k in ("deletion_auc", "insertion_auc", "pointing_game",
                                                                        "energy_in_mask")}  # fmt: skip
        answer = gallery_impl(reader, method=method)
    signed = meta[f"{P}/{method}/signed"]
    assert answer["signed"] == signed == (method == "integrated_gradients") and answer["total"] == 3
    assert [e["caption"] for e in answer["examples"]] == meta[f"{P}/captions"]
    assert [e["target"] for e in answer["examples"]] == meta[f"{P}/{method}/target"]
    for i, example in enumerate(answer["examples"]):
        for key, values in stored.items():
            assert example["scores"][key] == pytest.approx(float(values[i]), abs=1e-6)
        expected = overlay(images[i], maps[i], signed=signed, alpha=0.9 if signed else 0.6)
        np.testing.assert_allclose(_png(example["overlay"]), expected, atol=1.5 / 255)
        np.testing.assert_allclose(_png(example["image"]), images[i], atol=1.5 / 255)
    first, last = answer["colorscale"][0][1], answer["colorscale"][-1][1]
    assert (first, last) == (("rgb(5,48,97)", "rgb(103,0,31)") if signed else ("rgb(0,0,4)", "rgb(252,255,164)"))


def test_gallery_pages_and_bad_input(tour_root):
    with _read(tour_root, METHODS_RUN) as reader:
        page = gallery_impl(reader, method="rise", start=2, count=1)
        assert [e["index"] for e in page["examples"]] == [2] and page["start"] == 2
        with pytest.raises(ValueError, match="between 0 and 2"):
            gallery_impl(reader, method="rise", start=3)
        with pytest.raises(ValueError, match="count must be between 1 and 64"):
            gallery_impl(reader, method="rise", count=0)
        with pytest.raises(UnknownNameError, match="Did you mean: gradcam"):
            gallery_impl(reader, method="gradcm")


def test_example_compares_every_method(tour_root):
    with _read(tour_root, METHODS_RUN) as reader:
        meta = reader.meta()
        answer = example_impl(reader, index=1, method="occlusion")
        stored = reader.tensor(f"{P}/occlusion/maps", 0).astype(np.float32)[1]
        deletion = {m: float(reader.tensor(f"{P}/{m}/deletion_auc", 0)[1]) for m in meta[f"{P}/methods"]}
        with pytest.raises(ValueError, match="between 0 and 2"):
            example_impl(reader, index=-1, method="occlusion")
    assert answer["caption"] == meta[f"{P}/captions"][1] and answer["index"] == 1
    assert [row["method"] for row in answer["methods"]] == meta[f"{P}/methods"]
    for row in answer["methods"]:
        assert row["note"].startswith(f"del {deletion[row['method']]:.2f} · ins ") and row["overlay"].startswith(
            "data:"
        )
    heat = answer["map"]
    assert heat["method"] == "occlusion" and heat["signed"] and (heat["zmin"], heat["zmax"]) == (-1.0, 1.0)
    np.testing.assert_allclose(np.array(heat["z"], dtype=float), stored, atol=1e-6)


def test_scores_table_and_trust_order(tour_root):
    with _read(tour_root, METHODS_RUN) as reader:
        meta = reader.meta()
        answer = scores_impl(reader)
        per_example = {(m, k): reader.tensor(f"{P}/{m}/{k}", 0) for m in meta[f"{P}/methods"]
                       for k in ("deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask")}  # fmt: skip
    keys = [c["key"] for c in answer["columns"]]
    assert keys == ["deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask", "seconds", "energy_wh"]
    assert [c["better"] for c in answer["columns"][:4]] == ["lower", "higher", "higher", "higher"]
    rows = {row["method"]: row for row in answer["rows"]}
    assert list(rows) == meta[f"{P}/methods"]
    for stored in meta[f"{P}/table"]:
        row = rows[stored["method"]]
        for key in ("deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask", "seconds"):
            assert row[key] == pytest.approx(stored[key])
            if key != "seconds":  # the table holds the means of the per-example scores
                assert row[key] == pytest.approx(float(np.nanmean(per_example[stored["method"], key])), abs=1e-6)
        assert row["energy_wh"] / row["seconds"] == pytest.approx(
            rows["saliency"]["energy_wh"] / rows["saliency"]["seconds"]
        )
    methods = list(rows)
    signs = {"deletion_auc": 1, "insertion_auc": -1, "pointing_game": -1, "energy_in_mask": -1}
    ranks = np.mean([rankdata([s * rows[m][k] for m in methods]) for k, s in signs.items()], axis=0)
    assert [rows[m]["mean_rank"] for m in methods] == pytest.approx(ranks.tolist())
    assert answer["order"] == [methods[i] for i in np.argsort(ranks, kind="stable")]
    assert [rows[m]["rank"] for m in answer["order"]] == list(range(1, 16))
    assert answer["help"].startswith("Which map to trust: deletion AUC (lower is better)")


def test_failed_sanity_ranks_last(own_root):
    with _read(own_root, "table") as reader:
        answer = scores_impl(reader)
    # a is best on both metrics but failed its sanity check; c (ranks 2 and 2.5, a tie) beats b (3 and 2.5)
    assert answer["order"] == ["c", "b", "a"] and [c["key"] for c in answer["columns"]][-1] == "energy_wh"
    assert [row["mean_rank"] for row in answer["rows"]] == [1.0, 2.75, 2.25]
    assert [row["sanity"] for row in answer["rows"]] == ["fail", "pass", None]


def test_sanity_curves(own_root, tour_root):
    with _read(own_root, "sanity") as reader:
        meta = reader.meta()
        answer = sanity_impl(reader)
        tables = {(m, s): reader.tensor(f"{P}/{m}/sanity/{s}", 0) for m in ("saliency", "gradcam", "guided_backprop")
                  for s in ("spearman", "ssim")}  # fmt: skip
        assert scores_impl(reader)["rows"][0]["sanity"] == "pass"
    check = meta[f"{P}/saliency/sanity"]
    assert answer["measure"] == check["measure"] == "spearman" and answer["threshold"] == check["threshold"]
    assert answer["measures"] == ["spearman", "ssim"]
    assert [c["method"] for c in answer["curves"]] == ["saliency", "gradcam", "guided_backprop"]
    for curve in answer["curves"]:
        assert curve["layers"] == check["layers"] and curve["x"] == ["intact", *(f"+ {n}" for n in check["layers"])]
        assert curve["passed"] == meta[f"{P}/{curve['method']}/sanity"]["passed"]
        for measure in ("spearman", "ssim"):
            table = tables[curve["method"], measure]
            assert curve["values"][measure][0] == 1.0
            assert curve["values"][measure][1:] == pytest.approx(np.nanmean(table, axis=1).tolist(), abs=1e-6)
            np.testing.assert_allclose(np.array(curve["per_input"][measure][1:], dtype=float), table, atol=1e-6)
    with _read(tour_root, METHODS_RUN) as reader, pytest.raises(LookupError, match="no sanity check"):
        sanity_impl(reader)


def test_text_tokens(tour_root, own_root):
    with _read(tour_root, TEXT_RUN) as reader:
        meta = reader.meta()
        answer = text_impl(reader)
        scores = [reader.tensor(f"{TAGS.TEXT}/scores", i) for i in range(len(meta[f"{TAGS.TEXT}/tokens"]))]
    assert answer["method"] == meta[f"{TAGS.TEXT}/method"] == "integrated_gradients"
    assert [t["caption"] for t in answer["texts"]] == meta[f"{TAGS.TEXT}/captions"]
    for text, tokens, values in zip(answer["texts"], meta[f"{TAGS.TEXT}/tokens"], scores, strict=True):
        assert [t["token"] for t in text["tokens"]] == tokens
        assert [t["score"] for t in text["tokens"]] == pytest.approx(values.tolist())
        assert text["peak"] == pytest.approx(float(np.abs(values).max()))
        for token, value in zip(text["tokens"], values.tolist(), strict=True):
            colour = "219,51,46" if value > 0 else "38,140,209"
            assert token["background"] == f"rgba({colour},{abs(value) / text['peak']:.2f})"
    with _read(own_root, "text") as reader:
        (text,) = text_impl(reader)["texts"]
    assert [(t["text"], t["joined"]) for t in text["tokens"]] == [("[CLS]", False), ("walk", False), ("ing", True),
                                                                    ("bad", False)]  # fmt: skip
    assert text["caption"] == "target pos, predicted pos (75%)" and text["tokens"][2]["background"].endswith(",1.00)")
    with _read(tour_root, METHODS_RUN) as reader, pytest.raises(LookupError, match="no token attributions"):
        text_impl(reader)


def _strict(response):
    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    return json.loads(response.text, parse_constant=refuse)


def test_routes(tour_root, own_root):
    client = TestClient(create_app(tour_root))
    run = {"run": METHODS_RUN}
    index = _strict(client.get("/api/attributions/index", params=run))
    assert index["run"] == METHODS_RUN and len(index["methods"]) == 15
    gallery = _strict(client.get("/api/attributions/gallery", params={**run, "method": "smoothgrad"}))
    assert gallery["method"] == "smoothgrad" and len(gallery["examples"]) == 3
    example = _strict(client.get("/api/attributions/example", params={**run, "index": 2, "method": "cam"}))
    assert example["index"] == 2 and example["map"]["method"] == "cam"
    assert len(_strict(client.get("/api/attributions/scores", params=run))["rows"]) == 15
    text = _strict(client.get("/api/attributions/text", params={"run": TEXT_RUN}))
    assert text["run"] == TEXT_RUN and text["method"] == "integrated_gradients" and text["texts"][0]["tokens"]
    sanity = TestClient(create_app(own_root)).get("/api/attributions/sanity", params={"run": "sanity"})
    assert sanity.status_code == 200 and len(_strict(sanity)["curves"]) == 3

    def detail(path, params, status):
        response = client.get(f"/api/attributions/{path}", params=params)
        assert response.status_code == status, (path, params, response.text)
        return response.json()["detail"]

    assert "Did you mean: gradcam" in detail("gallery", {**run, "method": "gradcm"}, 404)
    assert "Valid:" in detail("example", {**run, "index": 0, "method": "nope"}, 404)
    assert "between 0 and 2" in detail("example", {**run, "index": 3, "method": "cam"}, 400)
    assert "between 0 and 2" in detail("gallery", {**run, "method": "cam", "start": 7}, 400)
    assert "count must be" in detail("gallery", {**run, "method": "cam", "count": 1000}, 400)
    assert "no sanity check" in detail("sanity", run, 404)
    assert "no token attributions" in detail("text", run, 404)
    assert "no attribution maps" in detail("gallery", {"run": TEXT_RUN, "method": "cam"}, 404)
    assert "no attribution maps" in detail("scores", {"run": "digits/cnn"}, 404)
    assert "no run" in detail("index", {"run": "shapes/nope"}, 404)
    assert client.get("/api/attributions/example", params={**run, "index": "x", "method": "cam"}).status_code == 422
    assert client.get("/api/attributions/gallery", params=run).status_code == 422  # method is required
