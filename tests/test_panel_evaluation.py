"""The evaluation panel's routes on the quick tour's evaluation runs, checked against what the store holds."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from deepscope._attribution_plots import as_rgb
from deepscope.evaluation import evaluate
from deepscope.report import build_report
from deepscope.server import create_app
from deepscope.server.panels import evaluation as panel
from deepscope.store import RunReader

P = "evaluation"
RUNS = ("spurious/biased", "spurious/clean")


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


def _stored(tour_root, run):
    """Meta and tensors of an evaluation run, read straight from the store."""
    with RunReader(tour_root / run) as reader:
        tensors = {tag: reader.tensor(tag, 0) for tag in reader.tensor_tags()}
        return reader.meta(), tensors


def _open(tour_root, run):
    return RunReader(tour_root / run)


def _answer(impl, root, run, **query):
    with RunReader(root / run) as reader:
        answer = impl(reader, **query)
    json.dumps(answer, allow_nan=False)  # JSON-ready: no NaN or inf
    return answer


def _png(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_available_only_on_evaluation_runs(tour_root, client):
    for run in RUNS:
        with _open(tour_root, run) as reader:
            assert panel.PANEL.available(reader)
        assert "evaluation" in [p["name"] for p in client.get("/api/panels", params={"run": run}).json()["panels"]]
    for run in ("digits/cnn", "toy2d/seed-0", "attention/minilm"):
        with _open(tour_root, run) as reader:
            assert not panel.PANEL.available(reader)
        assert "evaluation" not in [p["name"] for p in client.get("/api/panels", params={"run": run}).json()["panels"]]


@pytest.mark.parametrize("run", RUNS)
def test_summary_is_the_stored_summary(tour_root, run):
    meta, _ = _stored(tour_root, run)
    s = meta[f"{P}/summary"]
    answer = _answer(panel.summary_impl, tour_root, run)
    assert answer["classes"] == meta["probe/class_names"] == ["circle", "square", "triangle", "cross"]
    metrics = {m["key"]: m for m in answer["metrics"]}
    assert metrics["accuracy"]["value"] == s["accuracy"]
    acc = f"{s['accuracy']:.3f} [{s['accuracy_low']:.3f}, {s['accuracy_high']:.3f}]"
    assert metrics["accuracy"]["text"] == acc and acc in answer["text"][0]
    assert metrics["balanced_accuracy"]["low"] == s["balanced_accuracy_low"]
    assert metrics["ece"]["value"] == s["ece"] and metrics["largest_group_gap"]["value"] == s["largest_group_gap"]
    assert answer["examples"] == s["examples"] == 1000 and answer["level"] == s["level"]
    assert answer["below_baseline"] == (s["accuracy"] <= s["majority_baseline"]) == (run == "spurious/biased")
    assert len(answer["text"]) == (2 if answer["below_baseline"] else 1)
    assert answer["sections"] == {"groups": True, "audit": True}


def _expected_stored_cells(meta, tensors):
    """(true, pred) of every example kept: the cells', the gallery's, then the audit's, each position once."""
    g, kept = meta[f"{P}/gallery"], meta.get(f"{P}/cells") or {"indices": [], "labels": [], "preds": []}
    cells = {i: (t, p) for i, t, p in zip(kept["indices"], kept["labels"], kept["preds"], strict=True)}
    for i, t, p in zip(g["indices"], g["labels"], g["preds"], strict=True):
        cells.setdefault(i, (t, p))
    preds = dict(zip(tensors[f"{P}/audit/indices"].tolist(), tensors[f"{P}/audit/preds"].tolist(), strict=True))
    a = meta[f"{P}/audit"]
    for c in a["flagged"]:
        for i in a["examples"][str(c)]:
            cells.setdefault(i, (c, preds[i]))
    return Counter(cells.values())


@pytest.mark.parametrize("run", RUNS)
def test_confusion_matches_the_store(tour_root, run):
    meta, tensors = _stored(tour_root, run)
    counts = tensors[f"{P}/confusion"]
    answer = _answer(panel.confusion_impl, tour_root, run)
    assert np.array_equal(answer["counts"], counts)
    assert np.allclose(answer["rates"], counts / counts.sum(1, keepdims=True))
    assert answer["support"] == [r["support"] for r in meta[f"{P}/table"]]
    assert answer["total"] == 1000 and answer["correct"] == int(np.trace(counts))
    assert answer["correct"] / answer["total"] == pytest.approx(meta[f"{P}/summary"]["accuracy"])
    assert [[c["true"], c["pred"], c["count"], c["rate"]] for c in answer["confused"]] == meta[f"{P}/confused"]
    assert answer["shown"] == [0, 1, 2, 3]
    assert Counter({(t, p): n for t, p, n in answer["stored"]}) == _expected_stored_cells(meta, tensors)


def _cell_rows(meta, t, p):
    """Rows of ``evaluation/cells`` in cell (t, p): its highest-loss examples, worst first."""
    c = meta[f"{P}/cells"]
    return [k for k, (a, b) in enumerate(zip(c["labels"], c["preds"], strict=True)) if (a, b) == (t, p)]


def _thumb_matches(uri, inputs, row):
    """The thumbnail is the stored input of that row (min-max scaled to 8 bits)."""
    thumb = _png(uri)
    expected = np.round(as_rgb(inputs[row : row + 1].astype(np.float32))[0] * 255)
    return thumb.shape == (64, 64, 3) and np.abs(thumb.astype(float) - expected).max() <= 1


def test_a_cell_shows_its_highest_loss_examples_then_the_galleries(tour_root):
    meta, tensors = _stored(tour_root, "spurious/biased")
    counts, g, names, c = tensors[f"{P}/confusion"], meta[f"{P}/gallery"], meta["probe/class_names"], meta[f"{P}/cells"]
    assert c["per_cell"] == 6 and c["order"] == "loss" and not c["capped"] and c["inputs"]
    assert c["indices"] == tensors[f"{P}/cells/indices"].tolist() and len(tensors[f"{P}/cells/inputs"]) == c["kept"]
    t, p = g["labels"][0], g["preds"][0]  # the cell of the worst error: 79 triangles taken for circles
    answer = _answer(panel.cell_impl, tour_root, "spurious/biased", true=t, pred=p)
    assert (answer["true_name"], answer["pred_name"], answer["count"]) == (names[t], names[p], int(counts[t, p]))
    rows = _cell_rows(meta, t, p)
    assert answer["kept"] == len(rows) == 6
    first = answer["examples"][:6]
    assert [e["index"] for e in first] == [c["indices"][k] for k in rows]  # the cell's 6 highest-loss, worst first
    assert [e["loss"] for e in first] == [c["losses"][k] for k in rows] and np.all(
        np.diff([c["losses"][k] for k in rows]) <= 0
    )
    assert [e["confidence"] for e in first] == [c["pred_probability"][k] for k in rows]
    in_gallery = [k for k, (a, b) in enumerate(zip(g["labels"], g["preds"], strict=True)) if (a, b) == (t, p)]
    assert all(e["source"] == "gallery" for e in first)  # also in the gallery: shown once, with its Grad-CAM
    gallery = [e for e in answer["examples"] if e["source"] == "gallery"]
    assert [e["index"] for e in gallery] == [g["indices"][k] for k in in_gallery]  # worst first, as stored
    assert [e["true_probability"] for e in gallery] == [g["true_probability"][k] for k in in_gallery]
    assert len({e["index"] for e in answer["examples"]}) == answer["shown"] == len(answer["examples"])
    assert answer["shown"] == _expected_stored_cells(meta, tensors)[(t, p)] < answer["count"]
    sources = Counter(e["source"] for e in answer["examples"][6:])
    parts = ["the 6 highest-loss", f"{sources['gallery']} more from the error gallery"]
    if sources["audit"]:  # whether the cue audit adds examples here depends on the trained model (and so the CPU)
        parts.append(f"{sources['audit']} more from the cue audit")
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    assert sources["gallery"] > 0 and answer["note"] == (
        f"{answer['count']} examples in this cell; showing {answer['shown']} ({listed})."
    )
    assert _thumb_matches(gallery[0]["image"], tensors[f"{P}/gallery/inputs"], in_gallery[0])
    assert _png(gallery[0]["map"]).shape == (64, 64, 3) and not np.array_equal(
        _png(gallery[0]["map"]), _png(gallery[0]["image"])
    )
    labels, preds = tensors[f"{P}/embedding/labels"], tensors[f"{P}/embedding/preds"]
    expected_positions = tensors[f"{P}/embedding/indices"][(labels == t) & (preds == p)]
    assert answer["positions"] == sorted(expected_positions.tolist()) and answer["positions_complete"]
    assert answer["sample"] == {"size": 1000, "of": 1000}
    # a cell the gallery does not reach: its own examples, thumbnails of the stored inputs, no Grad-CAM
    q = next((a, b) for a in range(4) for b in range(4) if a != b and not _expected_extra(meta, tensors, a, b))
    other = _answer(panel.cell_impl, tour_root, "spurious/biased", true=q[0], pred=q[1])
    rows = _cell_rows(meta, *q)
    assert [e["index"] for e in other["examples"]] == [c["indices"][k] for k in rows]
    assert other["shown"] == min(int(counts[q]), 6) and all(
        e["source"] == "cells" and e["map"] is None for e in other["examples"]
    )
    assert all(
        _thumb_matches(e["image"], tensors[f"{P}/cells/inputs"], k)
        for e, k in zip(other["examples"], rows, strict=True)
    )
    assert other["note"] == f"{counts[q]} examples in this cell; showing 6 (the 6 highest-loss)."
    diagonal = _answer(panel.cell_impl, tour_root, "spurious/biased", true=0, pred=0)
    assert diagonal["note"].startswith(
        f"{counts[0, 0]} examples in this cell; showing {diagonal['shown']} (the 6 least confident"
    )
    probabilities = [e["confidence"] for e in diagonal["examples"][:6]]
    assert probabilities == sorted(probabilities)  # the least confident correct predictions, first


def _expected_extra(meta, tensors, t, p):
    """How many examples the gallery and the audit add to cell (t, p) beyond the cell's own."""
    return _expected_stored_cells(meta, tensors)[(t, p)] - len(_cell_rows(meta, t, p))


def _note_kind(answer, names):
    t, p, count, shown, note = answer["true"], answer["pred"], answer["count"], answer["shown"], answer["note"]
    if count == 0:
        assert note == f"No {names[t]} example was predicted as {names[p]}."
        return "empty"
    if shown == count:
        assert note == (
            f"The one {names[t]} example predicted as {names[p]} is shown."
            if count == 1
            else f"All {count} {names[t]} examples predicted as {names[p]} are shown."
        )
        return "all"
    if answer["kept"] is not None:  # the cell's own highest-loss examples, then the galleries'
        order = "least confident" if t == p else "highest-loss"
        assert note.startswith(f"{count} examples in this cell; showing {shown} (the {answer['kept']} {order}")
        return "kept"
    assert note.startswith(f"{count} {names[t]} example")
    if shown == 0:
        assert "none was stored with its input" in note
        return "none"
    assert f"{shown} of them" in note and f"the other {count - shown} not" in note
    return "some"


def test_every_cell_is_consistent_with_the_confusion_matrix(tour_root):
    kinds = set()
    for run in RUNS:
        meta, tensors = _stored(tour_root, run)
        counts, names = tensors[f"{P}/confusion"], meta["probe/class_names"]
        stored = _expected_stored_cells(meta, tensors)
        for t in range(4):
            for p in range(4):
                answer = _answer(panel.cell_impl, tour_root, run, true=t, pred=p)
                assert answer["count"] == counts[t, p] and answer["shown"] == stored[(t, p)] <= answer["count"]
                assert all((e["true"], e["pred"]) == (t, p) for e in answer["examples"])
                assert answer["shown"] >= answer["kept"] == min(counts[t, p], 6)
                assert all(e["image"].startswith("data:image/png") for e in answer["examples"])
                assert all(bool(e["map"]) == (e["source"] != "cells") for e in answer["examples"])
                assert len(answer["positions"]) == counts[t, p]
                kinds.add(_note_kind(answer, names))
    assert kinds == {"empty", "all", "kept"}


def _without_cells(tour_root, tmp_path):
    """A copy of the biased run as Evaluation.record wrote it before the cells' examples were kept."""
    old = tmp_path / "before-cells"
    shutil.copytree(tour_root / "spurious/biased", old)
    with sqlite3.connect(old / "run.sqlite") as conn:
        conn.execute("DELETE FROM tensors WHERE tag LIKE 'evaluation/cells/%'")
        conn.execute("DELETE FROM meta WHERE key = 'evaluation/cells'")
    return old


def test_a_run_recorded_before_the_cells_were_kept_still_opens(tour_root, tmp_path):
    old = _without_cells(tour_root, tmp_path)
    with RunReader(old) as reader:
        meta = reader.meta()
        tensors = {tag: reader.tensor(tag, 0) for tag in reader.tensor_tags()}
        assert f"{P}/cells" not in meta and not any(tag.startswith(f"{P}/cells") for tag in tensors)
        confusion = panel.confusion_impl(reader)
        kinds, names = set(), meta["probe/class_names"]
        for t in range(4):
            for p in range(4):
                answer = panel.cell_impl(reader, true=t, pred=p)
                json.dumps(answer, allow_nan=False)
                assert answer["kept"] is None and all(e["source"] in ("gallery", "audit") for e in answer["examples"])
                assert all(e["image"].startswith("data:image/png") and e["map"] for e in answer["examples"])
                kinds.add(_note_kind(answer, names))
                if t == p and answer["shown"] < answer["count"]:
                    assert "no correctly classified input" in answer["note"]
    assert kinds >= {"none", "some"}  # the old notes: the gallery's and the audit's inputs only
    assert Counter({(t, p): n for t, p, n in confusion["stored"]}) == _expected_stored_cells(meta, tensors)
    page = build_report(old).read_text(encoding="utf-8")
    assert "Errors (" in page


@pytest.mark.parametrize("run", RUNS)
def test_class_table_as_the_report_prints_it(tour_root, run):
    meta, _ = _stored(tour_root, run)
    answer = _answer(panel.classes_impl, tour_root, run)
    assert [m["key"] for m in answer["metrics"]] == ["precision", "recall", "specificity", "f1"]
    assert answer["metrics"][1]["label"] == "recall (sensitivity)"
    for row, stored in zip(answer["rows"], meta[f"{P}/table"], strict=True):
        assert (row["class"], row["support"]) == (stored["class"], stored["support"])
        for key in ("precision", "recall", "specificity", "f1"):
            value, low, high = stored[key], stored[f"{key}_low"], stored[f"{key}_high"]
            assert (row[key]["value"], row[key]["low"], row[key]["high"]) == (value, low, high)
            assert row[key]["text"] == f"{value:.3f} [{low:.3f}, {high:.3f}]"


@pytest.mark.parametrize("run", RUNS)
def test_calibration_bins(tour_root, run):
    meta, _ = _stored(tour_root, run)
    c = meta[f"{P}/calibration"]
    answer = _answer(panel.calibration_impl, tour_root, run)
    assert answer["edges"] == c["edges"] and answer["counts"] == c["counts"] and answer["ece"] == c["ece"]
    assert np.allclose(answer["centres"], (np.array(c["edges"][:-1]) + c["edges"][1:]) / 2)
    assert np.allclose(answer["widths"], np.diff(c["edges"])) and sum(answer["counts"]) == 1000
    full = [k for k, n in enumerate(answer["counts"]) if n]
    gaps = [answer["counts"][k] * abs(answer["accuracy"][k] - answer["confidence"][k]) for k in full]
    assert sum(gaps) / 1000 == pytest.approx(answer["ece"])  # the ECE is the bins' weighted gap
    assert f"{c['ece']:.3f}" in answer["text"]


@pytest.mark.parametrize("run", RUNS)
def test_groups(tour_root, run):
    meta, _ = _stored(tour_root, run)
    g = meta[f"{P}/groups"]
    answer = _answer(panel.groups_impl, tour_root, run)
    assert [r["group"] for r in answer["rows"]] == g["names"] == ["marker agrees", "marker disagrees"]
    assert [r["examples"] for r in answer["rows"]] == g["counts"]
    assert [r["accuracy"]["value"] for r in answer["rows"]] == g["accuracy"]["value"]
    assert [r["balanced_accuracy_gap"] for r in answer["rows"]] == g["balanced_accuracy_gap"]
    assert [r["recall"] for r in answer["rows"]] == g["recall"]["value"]
    assert answer["largest_gap"] == g["largest_gap"] == max(r["accuracy_gap"] for r in answer["rows"])
    for row, k in zip(answer["rows"], range(len(g["names"])), strict=True):
        value, low, high = (g["accuracy"][part][k] for part in ("value", "low", "high"))
        assert row["accuracy"]["text"] == f"{value:.3f} [{low:.3f}, {high:.3f}]"


@pytest.mark.parametrize("run", RUNS)
def test_audit(tour_root, run):
    meta, tensors = _stored(tour_root, run)
    a = meta[f"{P}/audit"]
    answer = _answer(panel.audit_impl, tour_root, run)
    names = meta["probe/class_names"]
    assert answer["flagged"] == [names[c] for c in a["flagged"]]
    assert bool(answer["flagged"]) == (run == "spurious/biased")  # the biased CNN looks at the marker
    assert [r["share"]["value"] for r in answer["rows"]] == a["per_class"]["value"]
    assert [r["area"] for r in answer["rows"]] == a["class_area"]
    assert [g["value"] for g in answer["groups"]] == a["per_group"]["value"]
    assert answer["audited"] == a["audited"] == len(tensors[f"{P}/audit/indices"])
    assert _png(answer["figure"]).shape[0] > 200
    positions = [i for c in a["flagged"] for i in a["examples"][str(c)]]
    assert sorted(e["index"] for e in answer["examples"]) == sorted(positions)
    preds = dict(zip(tensors[f"{P}/audit/indices"].tolist(), tensors[f"{P}/audit/preds"].tolist(), strict=True))
    assert all(e["pred"] == preds[e["index"]] for e in answer["examples"])
    verdict = "Flagged as relying mostly on context" if a["flagged"] else "No class is flagged"
    assert verdict in answer["verdict"]


def test_a_run_recorded_before_the_audit_positions_were_stored_still_opens(tour_root, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tour_root / "spurious/biased", old)
    with sqlite3.connect(old / "run.sqlite") as conn:  # what Evaluation.record wrote before
        conn.execute("DELETE FROM tensors WHERE tag IN ('evaluation/audit/indices', 'evaluation/audit/preds')")
    cells = [(t, p) for t in range(4) for p in range(4)]
    with RunReader(old) as reader:
        assert "evaluation/audit/preds" not in reader.tensor_tags()
        before = [[e["index"] for e in panel.cell_impl(reader, true=t, pred=p)["examples"]] for t, p in cells]
        audit = panel.audit_impl(reader)
    with RunReader(tour_root / "spurious/biased") as reader:
        now = [[e["index"] for e in panel.cell_impl(reader, true=t, pred=p)["examples"]] for t, p in cells]
        now_audit = panel.audit_impl(reader)
    assert before == now  # the audit's predictions come from the 2-D map's sample instead
    assert [e["pred"] for e in audit["examples"]] == [e["pred"] for e in now_audit["examples"]]


def test_every_route_over_http(client):
    for route in ("summary", "confusion", "classes", "calibration", "groups", "audit"):
        response = client.get(f"/api/evaluation/{route}", params={"run": "spurious/biased"})
        assert response.status_code == 200, route
        assert response.json()["run"] == "spurious/biased"
    answer = client.get("/api/evaluation/cell", params={"run": "spurious/clean", "true": 0, "pred": 1}).json()
    confusion = client.get("/api/evaluation/confusion", params={"run": "spurious/clean"}).json()
    assert answer["run"] == "spurious/clean" and answer["count"] == confusion["counts"][0][1] >= answer["shown"]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"run": "spurious/biased", "true": 4, "pred": 0}, 400, r"true must be a class index in [0, 3] (0 circle,"),
        ({"run": "spurious/biased", "true": 0, "pred": -1}, 400, "pred must be a class index in [0, 3]"),
        ({"run": "spurious/nothere", "true": 0, "pred": 0}, 404, "no run 'spurious/nothere'"),
        ({"run": "digits/cnn", "true": 0, "pred": 0}, 404, "holds no evaluation"),
    ],
)
def test_bad_cells_are_explained(client, params, status, message):
    response = client.get("/api/evaluation/cell", params=params)
    assert response.status_code == status and message in response.json()["detail"]
    assert (
        client.get("/api/evaluation/cell", params={"run": "spurious/biased", "true": "x", "pred": 0}).status_code == 422
    )


def test_a_tabular_evaluation_without_groups_or_audit(tmp_path, client):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 5, generator=generator), torch.randint(0, 3, (90,), generator=generator)
    result = evaluate(model, (x, y), ["a", "b", "c"], resamples=20, gallery=3, max_points=40)
    result.record(tmp_path / "tabular")
    app = TestClient(create_app(tmp_path))
    summary = app.get("/api/evaluation/summary", params={"run": "tabular"}).json()
    assert summary["sections"] == {"groups": False, "audit": False}
    for route, what in (("groups", "no groups"), ("audit", "no cue audit")):
        response = app.get(f"/api/evaluation/{route}", params={"run": "tabular"})
        assert response.status_code == 404 and what in response.json()["detail"]
    t, p = int(result.gallery.labels[0]), int(result.gallery.preds[0])
    answer = app.get("/api/evaluation/cell", params={"run": "tabular", "true": t, "pred": p}).json()
    assert answer["count"] == result.metrics.confusion[t, p]
    assert result.gallery.indices[0] in [e["index"] for e in answer["examples"]]
    assert all(e["image"] is None and e["map"] is None for e in answer["examples"])  # not images: listed only
    cells = result.cells
    own = cells.indices[(cells.labels == t) & (cells.preds == p)].tolist()
    assert [e["index"] for e in answer["examples"]][: len(own)] == own and answer["kept"] == len(own) > 0
    assert "No picture of the kept examples: the inputs are not images ((5,) per example)" in answer["note"]
    with RunReader(tmp_path / "tabular") as reader:
        assert (
            "evaluation/cells/indices" in reader.tensor_tags() and "evaluation/cells/inputs" not in reader.tensor_tags()
        )
    sample = result.embedding
    in_cell = sample.indices[(sample.labels == t) & (sample.preds == p)]
    assert answer["positions"] == sorted(in_cell.tolist()) and answer["sample"] == {"size": 40, "of": 90}
    assert answer["positions_complete"] == (len(in_cell) == answer["count"])
