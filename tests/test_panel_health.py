"""The layer-health panel's routes: summary, bucketed heat map, layer drill-down, gradient flow, residual ratios."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
import torch
from fastapi.testclient import TestClient
from torch import nn

from deepscope._diagnosis import Thresholds
from deepscope._distribution_summary import QUANTILES, split_summary
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.recorder import Recorder
from deepscope.server import create_app
from deepscope.server._api import NotFound
from deepscope.server.panels import health
from deepscope.server.panels.health import (
    PANEL,
    flow_impl,
    heatmap_impl,
    layer_impl,
    residual_impl,
    summary_impl,
)
from deepscope.store import RunReader, RunWriter

HEALTH_RUNS = {"digits/cnn", "digits/sigmoid-mlp", "toy2d/seed-0", "toy2d/seed-1"}
STATS = ["act_mean", "act_std", "act_zero", "dead_channels", "saturation", "grad_norm", "weight_norm", "update_ratio"]


def _store(reader):
    """``(steps, (T, S, L) table, meta)`` straight from the store, one ``tensor()`` call per step."""
    steps = reader.tensor_steps(TAGS.HEALTH)
    return steps, np.stack([reader.tensor(TAGS.HEALTH, int(s)) for s in steps]).astype(np.float64), reader.meta()


@pytest.fixture(scope="module")
def cnn(tour_root):
    with RunReader(tour_root / "digits/cnn") as reader:
        yield reader


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


def _synthetic(folder, layers=50, steps=2000):
    """A health run written with RunWriter: values near 1, a one-step spike and a one-step dip, every 3rd step."""
    rng = np.random.default_rng(0)
    table = (1 + 0.1 * rng.random((steps, len(STATS), layers))).astype(np.float32)
    table[:, STATS.index("dead_channels"), ::2] = np.nan  # "not an activation module"
    if steps > 1234:
        table[1234, STATS.index("grad_norm"), 17] = 1e4  # exploding for one step
        table[777, STATS.index("act_std"), 3] = 1e-6  # the signal vanishes for one step
    names = [f"block{j}.conv" for j in range(layers)]
    with RunWriter(folder, name="synthetic") as writer:
        writer.set_meta(TAGS.HEALTH_LAYERS, names)
        writer.set_meta(TAGS.HEALTH_STATISTICS, STATS)
        writer.set_meta(TAGS.HEALTH_ACTIVATION_LAYERS, names[1::2])
        for t in range(steps):
            writer.add_tensor(TAGS.HEALTH, 3 * t, table[t])


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spiky") / "run"
    _synthetic(folder)
    with RunReader(folder) as reader:
        yield reader


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real Recorder run with distributions (8 bins) and one residual block."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branch = nn.Sequential(nn.Linear(6, 6), nn.Tanh())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.branch(x)

    folder = tmp_path_factory.mktemp("recorded") / "run"
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), Block(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    with Recorder(model, folder, every=2, histogram_bins=8, residual=["2"], optimizer=opt) as rec:
        for _ in range(6):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    with RunReader(folder) as reader:
        yield reader


# ------------------------------------------------------------------------------------------- summary


def test_available_only_on_runs_with_layer_health(tour_root):
    from deepscope.server._api import run_ids

    shown = set()
    for run_id, folder in run_ids(tour_root).items():
        with RunReader(folder) as reader:
            if PANEL.available(reader):
                shown.add(run_id)
    assert shown == HEALTH_RUNS


def test_summary_matches_the_store(cnn):
    steps, table, meta = _store(cnn)
    answer = summary_impl(cnn)
    assert answer["layers"] == meta[TAGS.HEALTH_LAYERS]
    assert (answer["steps"], answer["first_step"], answer["last_step"]) == (len(steps), steps[0], steps[-1])
    assert answer["default"] == "grad_norm" and answer["gradient_flow"]
    assert answer["residual_blocks"] == meta[TAGS.RESIDUAL_BLOCKS] == ["res1", "res2"]
    assert answer["distributions"] is False and answer["nonfinite_step"] is None
    by_name = {s["name"]: s for s in answer["statistics"]}
    assert list(by_name) == meta[TAGS.HEALTH_STATISTICS]
    for name, entry in by_name.items():
        measured = ~np.isnan(table[:, meta[TAGS.HEALTH_STATISTICS].index(name)]).all(axis=0)
        assert entry["layers"] == measured.sum(), name
    assert by_name["dead_channels"]["layers"] == len(meta[TAGS.HEALTH_ACTIVATION_LAYERS]) == 5
    assert by_name["saturation"]["layers"] == 0  # ReLU is unbounded: nothing to show
    assert (by_name["grad_norm"]["log"], by_name["dead_channels"]["limits"]) == (True, (0.0, 1.0))  # the report's
    assert (by_name["grad_norm"]["aggregate"], by_name["act_std"]["aggregate"]) == ("max", "min")


# ------------------------------------------------------------------------------------------- heat map


def test_heatmap_with_a_column_per_step_is_the_stored_table(cnn):
    steps, table, meta = _store(cnn)
    s = meta[TAGS.HEALTH_STATISTICS].index("grad_norm")
    rows = [j for j in range(table.shape[2]) if not np.isnan(table[:, s, j]).all()]
    answer = heatmap_impl(cnn, statistic="grad_norm", columns=100)
    assert answer["layers"] == [meta[TAGS.HEALTH_LAYERS][j] for j in rows]
    assert answer["x"] == answer["x_end"] == steps.tolist() and answer["column_steps"] == [1] * len(steps)
    np.testing.assert_allclose(np.array(answer["values"], dtype=float), table[:, s, rows].T, rtol=1e-6)
    assert answer["worst_steps"] == [steps.tolist()] * len(rows)
    assert answer["nonfinite"] == []


@pytest.mark.parametrize(("statistic", "worst"), [("grad_norm", np.max), ("act_std", np.min)])
def test_heatmap_columns_keep_the_worst_value_of_their_steps(tour_root, statistic, worst):
    with RunReader(tour_root / "toy2d/seed-0") as reader:
        steps, table, meta = _store(reader)
        answer = heatmap_impl(reader, statistic=statistic, columns=3)
    s = meta[TAGS.HEALTH_STATISTICS].index(statistic)
    layers = meta[TAGS.HEALTH_LAYERS]
    assert sum(answer["column_steps"]) == len(steps) == 10 and len(answer["x"]) == 3
    assert max(answer["column_steps"]) - min(answer["column_steps"]) <= 1
    assert answer["x"][0] == steps[0] and answer["x_end"][-1] == steps[-1]
    for c, (lo, hi) in enumerate(zip(answer["x"], answer["x_end"], strict=True)):
        inside = (steps >= lo) & (steps <= hi)
        assert inside.sum() == answer["column_steps"][c]
        for r, name in enumerate(answer["layers"]):
            column = table[inside, s, layers.index(name)]
            assert answer["values"][r][c] == pytest.approx(worst(column), rel=1e-6)
            at = answer["worst_steps"][r][c]
            assert lo <= at <= hi and table[steps == at, s, layers.index(name)][0] == pytest.approx(
                worst(column), rel=1e-6
            )


def test_bucketing_50_layers_by_2000_steps_keeps_a_one_step_spike(spiky):
    reader = spiky
    answer = heatmap_impl(reader, statistic="grad_norm", columns=600)
    assert len(answer["x"]) == 600 and sum(answer["column_steps"]) == 2000
    assert set(answer["column_steps"]) == {3, 4} and answer["aggregate"] == "max"
    values = np.array(answer["values"], dtype=float)  # (50, 600)
    r, c = np.unravel_index(values.argmax(), values.shape)
    assert (answer["layers"][r], values[r, c], answer["worst_steps"][r][c]) == ("block17.conv", 1e4, 3 * 1234)
    assert answer["x"][c] <= 3 * 1234 <= answer["x_end"][c]
    assert np.sort(values, axis=None)[-2] < 1.2  # nothing else stands out
    dip = heatmap_impl(reader, statistic="act_std", columns=600)  # low is bad: the minimum is kept
    low = np.array(dip["values"], dtype=float)
    r, c = np.unravel_index(low.argmin(), low.shape)
    assert (dip["layers"][r], dip["worst_steps"][r][c], dip["aggregate"]) == ("block3.conv", 3 * 777, "min")
    assert low[r, c] == pytest.approx(1e-6)
    assert len(heatmap_impl(reader, statistic="dead_channels")["layers"]) == 25  # never-measured rows left out


def test_the_table_is_cached_until_the_store_changes(tmp_path):
    _synthetic(tmp_path / "run", layers=3, steps=20)
    with RunReader(tmp_path / "run") as reader:
        first = health._load(reader)
        assert health._load(reader) is first  # a second route does not read the store again
        with RunWriter(tmp_path / "run") as writer:  # a live run commits another step
            writer.add_tensor(TAGS.HEALTH, 999, np.full((len(STATS), 3), 7.0, dtype=np.float32))
        again = heatmap_impl(reader, statistic="grad_norm", columns=100)
    assert again["x"][-1] == 999 and again["values"][0][-1] == 7.0 and again["steps"] == 21


def test_50_layers_by_10000_steps_answers_well_under_a_second(tmp_path):
    _synthetic(tmp_path / "run", steps=10_000)
    with RunReader(tmp_path / "run") as reader:
        start = time.perf_counter()
        answer = heatmap_impl(reader, statistic="grad_norm")  # cold: reads and stacks 10,000 rows
        cold = time.perf_counter() - start
        start = time.perf_counter()
        layer_impl(reader, layer="block17.conv", statistic="grad_norm", step=3 * 1234)
        warm = time.perf_counter() - start
    assert len(answer["x"]) == health.DEFAULT_COLUMNS and max(answer["column_steps"]) == 17
    assert cold < 1.0 and warm < 0.25, (cold, warm)


# ------------------------------------------------------------------------------------------- drill-down


def test_layer_detail_is_the_store_at_that_step(cnn):
    steps, table, meta = _store(cnn)
    statistics, j = meta[TAGS.HEALTH_STATISTICS], meta[TAGS.HEALTH_LAYERS].index("conv2")
    answer = layer_impl(cnn, layer="conv2", statistic="update_ratio", step=int(steps[1]))
    assert answer["step"] == steps[1] and answer["title"] == "update / weight ratio" and answer["log"]
    series = answer["series"]
    assert series["steps"] == steps.tolist() and not series["downsampled"] and series["total"] == len(steps)
    np.testing.assert_allclose(series["values"], table[:, statistics.index("update_ratio"), j], rtol=1e-6)
    assert [v["statistic"] for v in answer["values"]] == statistics
    for i, entry in enumerate(answer["values"]):
        stored = table[1, i, j]
        assert entry["value"] is None if np.isnan(stored) else entry["value"] == pytest.approx(stored, rel=1e-6)
    assert answer["distribution"] is None  # the tour records no histograms
    assert layer_impl(cnn, layer="conv2", statistic="grad_norm")["step"] == steps[-1]  # default: the last step


def test_layer_series_is_min_max_bucketed_and_keeps_the_spike(spiky):
    reader = spiky
    answer = layer_impl(reader, layer="block17.conv", statistic="grad_norm", step=3 * 1234, points=100)
    series = answer["series"]
    assert series["total"] == 2000 and series["downsampled"] and len(series["steps"]) <= 100
    assert 3 * 1234 in series["steps"] and max(series["values"]) == 1e4
    assert series["steps"][0] == 0 and series["steps"][-1] == 3 * 1999 and series["steps"] == sorted(series["steps"])
    nan_row = layer_impl(reader, layer="block0.conv", statistic="dead_channels")["series"]
    assert nan_row["total"] == 0 and nan_row["steps"] == []  # never measured: an empty line, no NaN points


def test_layer_distributions_match_the_recorded_summaries(recorded):
    steps = recorded.tensor_steps(TAGS.DISTRIBUTIONS)
    stored = recorded.tensor(TAGS.DISTRIBUTIONS, int(steps[-1]))  # (layers, output|weights, summary)
    assert summary_impl(recorded)["distributions"] is True
    answer = layer_impl(recorded, layer="0", statistic="grad_norm", step=int(steps[-1]))
    dist = answer["distribution"]
    assert dist["step"] == steps[-1]
    for kind, summary in ((0, dist["output"]), (1, dist["weights"])):
        expected = split_summary(stored[0, kind])
        np.testing.assert_allclose(summary["edges"], expected.edges, rtol=1e-6)
        assert summary["counts"] == expected.counts.tolist() and summary["total"] == expected.total > 0
        assert [q[0] for q in summary["quantiles"]] == list(QUANTILES)
        np.testing.assert_allclose([q[1] for q in summary["quantiles"]], list(expected.quantiles.values()), rtol=1e-6)
    relu = layer_impl(recorded, layer="1", statistic="act_std")["distribution"]
    assert relu["output"]["total"] > 0 and relu["weights"] is None  # a ReLU owns no weights


# ------------------------------------------------------------------------------------------- flow, residual


def test_gradient_flow_matches_the_store_and_shows_the_vanishing_mlp(tour_root):
    with RunReader(tour_root / "digits/sigmoid-mlp") as reader:
        steps, table, meta = _store(reader)
        answer = flow_impl(reader, snapshots=2)
    grads = table[:, meta[TAGS.HEALTH_STATISTICS].index("grad_norm")]
    rows = [j for j in range(grads.shape[1]) if not np.isnan(grads[:, j]).all()]
    assert answer["layers"] == [meta[TAGS.HEALTH_LAYERS][j] for j in rows]
    assert (answer["first_layer"], answer["last_layer"]) == ("fc1", "head")
    assert answer["steps"] == [steps[0], steps[-1]]  # evenly spaced snapshots, ends included
    np.testing.assert_allclose(np.array(answer["norms"], dtype=float), grads[[0, -1]][:, rows], rtol=1e-6)
    np.testing.assert_allclose(answer["ratio"]["values"], grads[:, rows[0]] / grads[:, rows[-1]], rtol=1e-5)
    limits = Thresholds()
    assert (answer["vanishing_ratio"], answer["exploding_ratio"]) == (limits.vanishing_ratio, limits.exploding_ratio)
    assert max(answer["ratio"]["values"]) < limits.vanishing_ratio  # a deep sigmoid stack: the doctor's vanishing case


def test_residual_ratios_match_the_store(cnn, tour_root):
    steps, ratios = cnn.tensors(TAGS.RESIDUAL)
    answer = residual_impl(cnn)
    assert [b["block"] for b in answer["blocks"]] == ["res1", "res2"]
    for b, block in enumerate(answer["blocks"]):
        assert block["steps"] == steps.tolist()
        np.testing.assert_allclose(block["values"], np.stack(ratios)[:, b], rtol=1e-6)
    assert answer["threshold"] == Thresholds().residual_min
    with RunReader(tour_root / "toy2d/seed-0") as reader, pytest.raises(NotFound, match="no residual block"):
        residual_impl(reader)


def test_non_finite_values_are_flagged_and_the_json_stays_strict(tmp_path):
    names = ["a", "b"]
    with RunWriter(tmp_path / "run", name="diverged") as writer:
        writer.set_meta(TAGS.HEALTH_LAYERS, names)
        writer.set_meta(TAGS.HEALTH_STATISTICS, STATS)
        writer.set_meta(TAGS.HEALTH_NONFINITE, 4)
        for step in range(6):
            row = np.ones((len(STATS), 2), dtype=np.float32)
            if step == 4:
                row[STATS.index("grad_norm"), 1] = np.inf
            if step == 5:
                row[STATS.index("grad_norm"), 0] = np.nan
            writer.add_tensor(TAGS.HEALTH, step, row)
    with RunReader(tmp_path / "run") as reader:
        answer = heatmap_impl(reader, statistic="grad_norm", columns=6)
        detail = layer_impl(reader, layer="b", statistic="grad_norm", step=4)
        flow = flow_impl(reader)
    assert sorted(answer["nonfinite"]) == [[0, 5], [1, 4]] and answer["values"][1][4] is None
    assert detail["series"]["nonfinite_steps"] == [4] and detail["values"][STATS.index("grad_norm")]["value"] is None
    for payload in (answer, detail, flow):
        json.dumps(payload, allow_nan=False)


def test_impls_raise_precise_errors(cnn, tour_root):
    with pytest.raises(UnknownNameError, match="Did you mean: grad_norm"):
        heatmap_impl(cnn, statistic="grad_nrom")
    with pytest.raises(UnknownNameError, match="conv1"):
        layer_impl(cnn, layer="conv9", statistic="grad_norm")
    with pytest.raises(NotFound, match="nearest measured steps: 15, 30"):
        layer_impl(cnn, layer="conv1", statistic="grad_norm", step=16)
    with pytest.raises(ValueError, match="columns must be between 1"):
        heatmap_impl(cnn, statistic="grad_norm", columns=0)
    with pytest.raises(ValueError, match="points must be between 4"):
        layer_impl(cnn, layer="conv1", statistic="grad_norm", points=3)
    with RunReader(tour_root / "attention/minilm") as reader, pytest.raises(NotFound, match="no layer health"):
        summary_impl(reader)


# ------------------------------------------------------------------------------------------- HTTP


def test_every_route_over_http(client, tour_root):
    run = "digits/cnn"
    for path, params in [
        ("summary", {}),
        ("heatmap", {"statistic": "dead_channels", "columns": 2}),
        ("layer", {"layer": "relu1", "statistic": "dead_channels", "step": 30}),
        ("flow", {"snapshots": 3}),
        ("residual", {"points": 10}),
    ]:
        response = client.get(f"/api/health/{path}", params={"run": run, **params})
        assert response.status_code == 200, (path, response.text)
        assert response.json()["run"] == run
    heat = client.get("/api/health/heatmap", params={"run": run, "statistic": "dead_channels", "columns": 2}).json()
    assert heat["layers"] == ["relu1", "relu2", "res1.branch.1", "res2.branch.1", "embed"]
    assert heat["column_steps"] == [2, 2]
    assert "health" in [p["name"] for p in client.get("/api/panels", params={"run": run}).json()["panels"]]
    assert "health" not in [
        p["name"] for p in client.get("/api/panels", params={"run": "spurious/clean"}).json()["panels"]
    ]


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("heatmap", {"statistic": "dead"}, 404, "unknown health statistic 'dead'"),
        ("heatmap", {"statistic": "grad_norm", "columns": 100_000}, 400, "columns must be between 1 and 4000"),
        ("layer", {"layer": "conv", "statistic": "grad_norm"}, 404, "unknown health layer 'conv'"),
        ("layer", {"layer": "conv1", "statistic": "grad_norm", "step": 10_000}, 404, "nearest measured steps"),
        ("layer", {"layer": "conv1", "statistic": "grad_norm", "points": 1}, 400, "points must be between 4"),
        ("flow", {"snapshots": 0}, 400, "snapshots must be between 1"),
        ("residual", {"run": "toy2d/seed-1"}, 404, "no residual block"),
        ("summary", {"run": "attention/minilm"}, 404, "no layer health"),
    ],
)
def test_bad_input_gets_a_helpful_status(client, path, params, status, message):
    response = client.get(f"/api/health/{path}", params={"run": "digits/cnn", **params})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_query_types_are_validated(client):
    response = client.get(
        "/api/health/layer", params={"run": "digits/cnn", "layer": "conv1", "statistic": "grad_norm", "step": "x"}
    )
    assert response.status_code == 422
    assert client.get("/api/health/heatmap", params={"run": "digits/cnn"}).status_code == 422  # statistic is required
