"""The evaluation panel in real headless Chromium: click a confusion cell, see its examples; names stay text."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

import torch

from conftest import build_tiny_cnn, serve_dashboard
from deepscope.evaluation import evaluate
from deepscope.store import RunReader

XSS = '<img src=x onerror="window.__xss=1">'
CELL = "document.querySelector('#evaluation-cell')"


def _click_cell(page, true: int, pred: int) -> None:
    """Click the heatmap cell (true row, predicted column) with the mouse, where Plotly drew it."""
    box = page.evaluate(
        """([t, p]) => {
            const gd = document.querySelector('#evaluation-confusion');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
            const col = gd.data[0].x.indexOf(p), row = gd.data[0].y.indexOf(t);
            return {x: r.left + xa._offset + xa.l2p(col), y: r.top + ya._offset + ya.l2p(row)};
        }""",
        [true, pred],
    )
    page.wait_for_timeout(400)  # Plotly takes two clicks within its doubleClickDelay (300 ms) for a double-click
    page.mouse.click(box["x"], box["y"])
    ready = f"{CELL}.dataset.state === 'ready'"
    page.wait_for_function(f"() => {ready} && {CELL}.dataset.true === '{true}' && {CELL}.dataset.pred === '{pred}'")


def _confusion(root, run):
    with RunReader(root / run) as reader:
        return reader.tensor("evaluation/confusion", 0), reader.meta()


def test_click_an_off_diagonal_cell_and_see_its_examples(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    counts, meta = _confusion(tour_root, "spurious/biased")
    errors, requests = open_panel(page, tour_dashboard, "spurious/biased", "evaluation")
    accuracy = meta["evaluation/summary"]["accuracy"]
    assert (
        page.locator("#evaluation-summary [data-key=accuracy] .evaluation-metric-value")
        .text_content()
        .startswith(f"{accuracy:.3f} [")
    )
    assert page.locator("#evaluation-summary").get_attribute("data-below-baseline") == "true"
    g = meta["evaluation/gallery"]
    t, p = g["labels"][0], g["preds"][0]  # the worst error's cell: its gallery examples are stored
    other = next((a, b) for a in range(4) for b in range(4) if a != b and (a, b) != (t, p) and counts[a, b])
    _click_cell(page, *other)
    names = meta["probe/class_names"]
    assert page.locator("#evaluation-cell .evaluation-cell-title").text_content() == (
        f"true {names[other[0]]} → predicted {names[other[1]]}"
    )
    assert page.locator("#evaluation-cell").get_attribute("data-count") == str(counts[other])
    _click_cell(page, t, p)
    shown = int(page.locator("#evaluation-cell").get_attribute("data-shown"))
    stored = sum(1 for a, b in zip(g["labels"], g["preds"], strict=True) if (a, b) == (t, p))
    assert shown >= stored > 6 and page.locator("#evaluation-cell .evaluation-example").count() == shown
    first = page.locator("#evaluation-cell .evaluation-example").first
    assert first.get_attribute("data-index") == str(g["indices"][0])  # the worst error heads its cell's examples
    caption = first.locator("figcaption").inner_text()
    assert f"true: {names[t]}" in caption and f"predicted: {names[p]}" in caption
    assert f"p(pred) {g['pred_probability'][0]:.3f}" in caption and f"loss {g['losses'][0]:.3f}" in caption
    assert first.locator("img.evaluation-thumb").count() == 2  # the input and its Grad-CAM
    assert page.evaluate("document.querySelector('#evaluation-cell img').naturalWidth") == 64
    note = page.locator("#evaluation-cell .evaluation-note").text_content()
    assert note.startswith(f"{counts[t, p]} examples in this cell; showing {shown} (the 6 highest-loss")
    assert f"{stored - 6} more from the error gallery" in note  # the cue audit may add some too
    page.locator("#evaluation-cell details.evaluation-positions summary").click()
    assert page.locator("#evaluation-cell details.evaluation-positions p").is_visible()
    page.select_option("#evaluation-mode", "rates")  # row-normalised: each row of the heatmap sums to 1
    page.wait_for_function("() => document.querySelector('#evaluation-confusion').dataset.mode === 'rates'")
    sums = page.evaluate(
        "document.querySelector('#evaluation-confusion').data[0].z.map(r => r.reduce((a, b) => a + b))"
    )
    assert sums == pytest.approx([1.0] * 4)
    page.locator(".evaluation-pair").first.click()  # the most confused pair, from the list
    top = meta["evaluation/confused"][0]
    page.wait_for_function(f"() => {CELL}.dataset.true === '{top[0]}' && {CELL}.dataset.pred === '{top[1]}'")
    assert page.locator("#evaluation-class-table tr").count() == 5
    assert page.locator("#evaluation-group-table tr").count() == 3
    assert page.locator("#evaluation-audit").get_attribute("data-flagged") == str(
        len(meta["evaluation/audit"]["flagged"])
    )
    ece = page.evaluate("Number(document.querySelector('#evaluation-calibration').dataset.ece)")
    assert ece == pytest.approx(meta["evaluation/calibration"]["ece"])
    assert errors == []
    assert requests and all(url.startswith(tour_dashboard) for url in requests)


def test_every_off_diagonal_cell_shows_its_highest_loss_thumbnails(
    tour_root, tour_dashboard, chromium_page, open_panel
):
    page = chromium_page
    counts, meta = _confusion(tour_root, "spurious/biased")
    c = meta["evaluation/cells"]
    errors, _ = open_panel(page, tour_dashboard, "spurious/biased", "evaluation")
    for t, p in ((a, b) for a in range(4) for b in range(4) if a != b and counts[a, b]):
        _click_cell(page, t, p)
        own = [i for i, a, b in zip(c["indices"], c["labels"], c["preds"], strict=True) if (a, b) == (t, p)]
        figures = page.locator("#evaluation-cell .evaluation-example")
        assert len(own) == min(int(counts[t, p]), 6) and figures.count() >= len(own)
        assert [figures.nth(k).get_attribute("data-index") for k in range(len(own))] == [str(i) for i in own]
        inputs = page.locator("#evaluation-cell .evaluation-example img.evaluation-thumb:first-child")
        assert inputs.count() == figures.count()  # every example shown with its input
        page.wait_for_function(
            "() => [...document.querySelectorAll('#evaluation-cell img.evaluation-thumb')]"
            ".every((img) => img.complete && img.naturalWidth === 64)"
        )
        assert page.locator("#evaluation-cell").get_attribute("data-kept") == str(len(own))
        note = page.locator("#evaluation-cell .evaluation-note").text_content()
        assert note.startswith(
            f"{counts[t, p]} examples in this cell; showing {figures.count()} (the {len(own)} highest-loss"
        )
    assert errors == []


def test_class_and_group_names_stay_text(tmp_path, chromium_page, open_panel):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(48, 3, 16, 16, generator=generator)
    labels = torch.arange(48) % 10
    masks = torch.zeros(48, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    names = [XSS, "b&w <b>bold</b>", *[f"class {k}" for k in range(2, 10)]]
    groups = [XSS if i % 2 else "site & <i>B</i>" for i in range(48)]
    result = evaluate(
        build_tiny_cnn(), (images, labels), names, groups=groups, masks=masks, resamples=20, audit_samples=20
    )
    result.record(tmp_path / "evil", name=XSS)
    with serve_dashboard(tmp_path) as url:
        page = chromium_page
        errors, requests = open_panel(page, url, "evil", "evaluation")
        assert XSS in page.locator("#evaluation-class-table").inner_text()
        assert "b&w <b>bold</b>" in page.locator("#evaluation-class-table").inner_text()
        ticks = page.locator("#evaluation-confusion .xtick text").all_text_contents()
        assert ticks[:2] == [XSS[:23] + "…", "b&w <b>bold</b>"]  # as typed (cut to 24 characters), not as HTML
        assert XSS in page.locator("#evaluation-group-table").inner_text()
        assert "site & <i>B</i>" in page.locator("#evaluation-group-table").inner_text()
        _click_cell(page, 0, 1)
        assert page.locator("#evaluation-cell .evaluation-cell-title").text_content() == (
            f"true {XSS} → predicted b&w <b>bold</b>"
        )
        assert page.locator("#evaluation-cell").get_attribute("data-count") == str(result.metrics.confusion[0, 1])
        pairs = page.locator(".evaluation-pair").all_text_contents()
        assert any(XSS in pair for pair in pairs) and any("b&w <b>bold</b>" in pair for pair in pairs)
        assert page.locator("img[src=x], b, i").count() == 0  # no element was made from a name
        assert page.evaluate("window.__xss") is None
        assert errors == [] and all(r.startswith(url) for r in requests)
