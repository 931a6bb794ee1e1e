"""The layer-health panel in real Chromium: statistic menu, heat-map click drill-down, flow slider, run switch, XSS."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from conftest import serve_dashboard
from deepscope._tags import TAGS
from deepscope.store import RunReader, RunWriter

XSS = '<img src=x onerror="window.__xss=1">'
STATS = ["act_mean", "act_std", "act_zero", "dead_channels", "saturation", "grad_norm", "weight_norm", "update_ratio"]


def _click_cell(page, row, column):
    """Click the centre of heat-map cell (row, column), located through the plot's own axes."""
    x, y = page.evaluate(
        """([r, c]) => {
            const gd = document.getElementById("health-heatmap");
            const box = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
            return [box.left + xa._offset + xa.l2p(gd.data[0].x[c]), box.top + ya._offset + ya.l2p(r)];
        }""",
        [row, column],
    )
    page.mouse.click(x, y)
    return x, y


def test_menu_click_slider_and_run_switch(chromium_page, tour_dashboard, open_panel, tour_root):
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "digits/cnn", "health")
    heat = page.locator("#health-heatmap")
    assert heat.get_attribute("data-statistic") == "grad_norm" and page.locator("#health-log").is_checked()
    assert page.locator("#health-heatmap .ytick text").all_text_contents() == [
        "conv1",
        "conv2",
        "res1.branch.0",
        "res1.branch.2",
        "res2.branch.0",
        "res2.branch.2",
        "fc",
        "head",
    ]
    assert "4 measured steps in 4 columns of 1 step" in page.locator("#health-note").text_content()

    page.select_option("#health-statistic", "dead_channels")
    page.wait_for_selector("#health-heatmap[data-statistic=dead_channels][data-rows='5']")
    assert not page.locator("#health-log").is_checked()  # shares are drawn linear, as in the report
    _click_cell(page, 1, 2)  # relu2 at the third measured step (45)
    page.wait_for_selector("#health-detail[data-layer=relu2][data-step='45']")
    assert page.locator("#health-detail-title").text_content() == "relu2 · step 45"
    current = page.locator("#health-values tr.health-current")
    assert current.get_attribute("data-statistic") == "dead_channels"
    with RunReader(tour_root / "digits/cnn") as reader:
        stored = reader.tensor(TAGS.HEALTH, 45)[
            STATS.index("dead_channels"), reader.meta()[TAGS.HEALTH_LAYERS].index("relu2")
        ]
    assert float(current.locator("td").nth(1).text_content()) == pytest.approx(float(stored), abs=1e-3)
    assert page.locator("#health-series").get_attribute("data-points") == "4"

    assert page.locator("#health-flow-label").text_content() == "60"  # the latest step first
    page.locator("#health-flow-step").fill("0")
    page.wait_for_selector("#health-flow-chart[data-step='15']")
    assert page.locator("#health-flow-chart .xtick text").first.text_content() == "conv1"
    assert page.locator("#health-flow-chart").inner_text().count("vanishing bound") == 1
    assert page.locator("#health-residual").is_visible()
    assert page.locator("#health-residual .js-plotly-plot").get_attribute("data-blocks") == "2"

    page.click("#runs li[data-run='toy2d/seed-0'] .name")  # another run: the chosen statistic is kept
    page.wait_for_selector("#health-heatmap[data-statistic=dead_channels][data-rows='2']")
    page.wait_for_selector("body[data-panel-ready=health]")
    assert page.locator("#health-detail").get_attribute("data-layer") == "relu"
    assert not page.locator("#health-residual").is_visible()
    assert "No value distributions were recorded" in page.locator("#health-distribution").text_content()
    assert errors == []
    assert all(url.startswith(tour_dashboard) for url in requests), [
        u for u in requests if not u.startswith(tour_dashboard)
    ]


def _hostile_run(folder):
    """Layer, block and run names that are HTML, with distributions: everything the panel prints."""
    names = [XSS, "<b>bold</b> & co", "head"]
    bins, levels = 4, [0.01, 0.25, 0.5, 0.75, 0.99]
    with RunWriter(folder, name=XSS) as writer:
        writer.set_meta(TAGS.HEALTH_LAYERS, names)
        writer.set_meta(TAGS.HEALTH_STATISTICS, STATS)
        writer.set_meta(TAGS.HEALTH_ACTIVATION_LAYERS, names[1:2])
        writer.set_meta(TAGS.RESIDUAL_BLOCKS, [XSS])
        writer.set_meta(TAGS.HISTOGRAM_BINS, bins)
        writer.set_meta(TAGS.QUANTILE_LEVELS, levels)
        for step in range(0, 50, 10):
            writer.add_tensor(TAGS.HEALTH, step, np.full((len(STATS), 3), 0.5 + step / 100, dtype=np.float32))
            writer.add_tensor(TAGS.RESIDUAL, step, np.array([0.3], dtype=np.float32))
            summary = np.array([-1.0, 1.0, 1, 5, 3, 1, -0.9, -0.4, 0.0, 0.4, 0.9], dtype=np.float32)
            dists = np.stack([np.stack([summary, summary]) for _ in names])  # (layers, output|weights, summary)
            dists[1, 1] = np.nan  # no weights
            writer.add_tensor(TAGS.DISTRIBUTIONS, step, dists)


def test_user_strings_are_text_never_html(chromium_page, open_panel, tmp_path):
    _hostile_run(tmp_path / "hostile")
    page = chromium_page
    with serve_dashboard(tmp_path) as url:
        errors, requests = open_panel(page, url, "hostile", "health")
        assert page.locator("#health-heatmap .ytick text").all_text_contents() == [XSS, "<b>bold</b> & co", "head"]
        assert page.locator("#health-detail-title").text_content() == f"{XSS} · step 40"
        x, y = _click_cell(page, 1, 0)
        page.wait_for_selector("#health-detail[data-step='0']")
        assert page.locator("#health-detail-title").text_content() == "<b>bold</b> & co · step 0"
        page.mouse.move(x, y + 1)
        page.wait_for_selector("#health-heatmap .hoverlayer .hovertext")
        assert "<b>bold</b> & co" in page.locator("#health-heatmap .hoverlayer").text_content()
        assert page.locator(".health-dist[data-kind=output] .js-plotly-plot").count() == 1
        assert "not measured" in page.locator(".health-dist[data-kind=weights]").text_content()
        assert page.locator("#health-residual .legendtext").all_text_contents() == [XSS]
        assert page.locator("#health-flow-chart .xtick text").first.text_content() == XSS
        assert page.locator("#health-panel img, #panel img").count() == 0  # no <img> was ever created from a name
        assert page.evaluate("window.__xss") is None
        assert errors == []
        assert all(u.startswith(url) for u in requests)
