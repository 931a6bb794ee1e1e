"""The representation panel in real headless Chromium: step slider, play, layer choice, decision map, evolution, XSS."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from conftest import serve_dashboard
from deepscope._tags import TAGS
from deepscope.store import RunReader, RunWriter

XSS = '<img src=x onerror="window.__xss=1">'
XSS_LAYER = "<script>window.__xss=2</script>.fc"
SCATTER = "document.getElementById('representation-scatter')"
DECISION = "document.getElementById('representation-decision')"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _only_local(requests, url):
    assert requests and all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]


def test_slider_and_play_drive_scatter_and_evolution(tour_dashboard, tour_root, chromium_page, open_panel):
    with RunReader(tour_root / "digits/cnn") as reader:
        steps = reader.tensor_steps("repr/embed").tolist()
        accuracy = reader.scalars(TAGS.ACCURACY)
        n_points = len(reader.tensor(TAGS.PROBE_LABELS, 0))
        wrong_first = int((reader.tensor(TAGS.PROBE_PRED, steps[0]) != reader.tensor(TAGS.PROBE_LABELS, 0)).sum())
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "digits/cnn", "representation")
    slider = page.locator("#representation-step")
    assert slider.get_attribute("max") == str(len(steps) - 1)
    page.wait_for_function(f"() => {SCATTER}.dataset.step === '{steps[-1]}'")  # opens on the last snapshot
    traces = page.evaluate(f"{SCATTER}.data.map(t => [t.name, t.x.length])")
    assert [name for name, _ in traces] == [str(k) for k in range(10)] + ["wrong prediction"]
    assert sum(n for name, n in traces[:-1]) == n_points
    heading = page.locator(".representation-evolution[data-layer=relu2] h3").text_content()
    assert heading == "Feature evolution of “relu2”"

    slider.fill("0")
    page.wait_for_function(f"() => {SCATTER}.dataset.step === '{steps[0]}'")
    page.wait_for_function(f"() => document.querySelector('.representation-tiles')?.dataset.step === '{steps[0]}'")
    assert page.locator("#representation-step-value").text_content() == str(steps[0])
    assert page.evaluate(f"{SCATTER}.dataset.wrong") == str(wrong_first)
    readout = page.locator("#representation-accuracy").text_content()
    assert f"step {steps[0]}: {_pct(accuracy.values[0])}" in readout
    assert page.locator(".representation-tile").count() == 8
    assert page.locator(".representation-tile img").first.get_attribute("src").startswith("data:image/png;base64,")
    layout_x = page.evaluate(f"{SCATTER}.layout.xaxis.range")

    page.click("#representation-play")
    assert page.locator("#representation-play").get_attribute("aria-pressed") == "true"
    page.wait_for_function(f"() => {SCATTER}.dataset.step === '{steps[-1]}'", timeout=10_000)
    page.wait_for_selector("#representation-play[aria-pressed=false]")
    assert page.evaluate(f"{SCATTER}.layout.xaxis.range") == layout_x  # the axes stay fixed across steps
    assert f"{_pct(accuracy.values[-1])}" in page.locator("#representation-accuracy").text_content()
    assert errors == []
    _only_local(requests, tour_dashboard)


def test_decision_map_follows_the_slider(tour_dashboard, tour_root, chromium_page, open_panel):
    with RunReader(tour_root / "toy2d/seed-0") as reader:
        steps = reader.tensor_steps(TAGS.GRID_SCORE).tolist()
        grid = reader.tensor(TAGS.GRID_SCORE, steps[2])
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "toy2d/seed-0", "representation")
    page.wait_for_function(f"() => {DECISION}.dataset.step === '{steps[-1]}'")
    page.locator("#representation-step").fill("2")
    page.wait_for_function(f"() => {DECISION}.dataset.step === '{steps[2]}' && {SCATTER}.dataset.step === '{steps[2]}'")
    z = np.array(page.evaluate(f"{DECISION}.data[0].z"), dtype=float)
    np.testing.assert_allclose(z, grid, atol=6e-4)
    assert page.evaluate(f"{DECISION}.data.map(t => t.name).slice(2)") == ["yellow", "blue"]
    assert "P(blue)" in page.evaluate(f"{DECISION}.data[0].colorbar.title.text")
    assert page.locator("#representation-projection").count() == 0  # a 2-unit layer needs no projection
    assert errors == []
    _only_local(requests, tour_dashboard)


@pytest.fixture
def hostile_root(tmp_path):
    """A tiny 2-D toy run whose class names and layer names are HTML."""
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, size=(40, 2)).astype(np.float32)
    inputs[0, 0] = -0.5  # point 0, the first tile's image, is of class 0 (the <img> name)
    labels = (inputs[:, 0] > 0).astype(np.int64)
    with RunWriter(tmp_path / "hostile", name=XSS) as writer:
        writer.set_meta(TAGS.CLASS_NAMES, [XSS, "b&<b>bold</b>"])
        writer.set_meta(TAGS.LAYERS, [XSS_LAYER, "plain"])
        writer.set_meta(TAGS.GRID_EXTENT, [-1.0, 1.0, -1.0, 1.0])
        writer.set_meta(TAGS.EVOLUTION_LAYERS, [XSS_LAYER])
        writer.set_meta(f"evolution/{XSS_LAYER}", {"channels": [0, 1], "field": None})
        writer.add_tensor(TAGS.PROBE_INPUTS, 0, inputs)
        writer.add_tensor(TAGS.PROBE_LABELS, 0, labels)
        for step in (0, 5, 10):
            writer.add_tensor(f"repr/{XSS_LAYER}", step, rng.normal(size=(40, 6)).astype(np.float32))
            writer.add_tensor("repr/plain", step, rng.normal(size=(40, 2)).astype(np.float32))
            pred = labels if step else 1 - labels
            writer.add_tensor(TAGS.PROBE_PRED, step, pred)
            writer.add_scalar(TAGS.ACCURACY, step, float((pred == labels).mean()))
            writer.add_tensor(TAGS.GRID_SCORE, step, rng.uniform(size=(8, 8)).astype(np.float32))
            for part in ("patches", "projections"):
                tiles = rng.normal(size=(2, 1, 4, 4)).astype(np.float32)
                writer.add_tensor(f"evolution/{XSS_LAYER}/{part}", step, tiles)
            writer.add_tensor(f"evolution/{XSS_LAYER}/scores", step, np.array([1.0, 2.0], dtype=np.float32))
            writer.add_tensor(f"evolution/{XSS_LAYER}/images", step, np.array([0, 1]))
    return tmp_path


def test_user_strings_are_text_not_html(hostile_root, chromium_page, open_panel):
    page = chromium_page
    with serve_dashboard(hostile_root) as url:
        errors, requests = open_panel(page, url, "hostile", "representation")
        page.wait_for_function(f"() => {SCATTER}.dataset.step === '10'")
        page.wait_for_selector(".representation-tile")
        legend = page.locator("#representation-scatter .legendtext").all_text_contents()
        assert XSS in legend and "b&<b>bold</b>" in legend  # shown literally, not parsed
        assert XSS_LAYER in page.locator(".representation-view h3").first.text_content()
        assert XSS_LAYER in page.locator("#representation-layer option").all_text_contents()
        assert XSS_LAYER in page.locator(".representation-evolution h3").text_content()
        assert f"“{XSS}”" in page.locator(".representation-tile figcaption").all_text_contents()[1]
        decision_legend = page.locator("#representation-decision .legendtext").all_text_contents()
        assert XSS in decision_legend
        assert page.locator("#representation-projection").count() == 1  # 6 stored values: PCA or UMAP

        page.select_option("#representation-layer", "plain")  # another layer: its frames, the same step
        page.wait_for_function(f"() => {SCATTER}.layout.xaxis.title.text === 'unit 1 (z-score)'")
        assert page.locator(".representation-view h3").first.text_content() == "Inside the network: layer “plain”"
        assert page.locator("#representation-projection").count() == 0
        page.locator("#representation-step").fill("0")
        page.wait_for_function(f"() => {SCATTER}.dataset.step === '0' && {SCATTER}.dataset.wrong === '40'")
        assert page.evaluate("window.__xss") is None
        assert page.locator("img[src='x']").count() == 0 and page.locator("b").count() == 0
        assert errors == []
        _only_local(requests, url)
