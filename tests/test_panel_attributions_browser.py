"""The attributions panel in headless Chromium: method switcher, compare-all view, scores, sanity curves, tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from conftest import build_tiny_cnn, serve_dashboard
from deepscope._tags import TAGS
from deepscope.attribution import compare
from deepscope.store import RunReader
from deepscope.text import TokenAttribution

P = TAGS.ATTRIBUTION
XSS = '<img src=x onerror="window.__xss=1">'
SCRIPT = "cat <script>window.__xss=2</script>"
MAP = "document.querySelector('#attributions-map')"
SANITY = "document.querySelector('#attributions-sanity')"


def _values(page, selector):
    return [float(v) for v in page.locator(selector).evaluate_all("nodes => nodes.map(n => n.dataset.value)")]


def test_method_switcher_compare_and_scores(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    with RunReader(tour_root / "shapes" / "attribution") as reader:
        meta = reader.meta()
        deletion = {m: reader.tensor(f"{P}/{m}/deletion_auc", 0).tolist() for m in ("saliency", "gradcam", "rise")}
    errors, requests = open_panel(page, tour_dashboard, "shapes/attribution", "attributions")
    captions = meta[f"{P}/captions"]
    assert page.locator("#attributions-gallery figure .attributions-caption").all_text_contents() == captions
    assert page.locator("#attributions-gallery figure img").count() == 2 * len(captions)  # input and overlay
    assert _values(page, "#attributions-gallery [data-metric=deletion_auc]") == pytest.approx(deletion["saliency"])
    assert page.locator("#attributions-scores tr.attributions-current").get_attribute("data-method") == "saliency"

    page.select_option("#attributions-method", "gradcam")  # the switcher redraws the gallery and the highlights
    page.wait_for_selector("#attributions-gallery[data-method=gradcam]")
    assert page.locator("#attributions-gallery-section h3").text_content() == "Maps · gradcam"
    assert _values(page, "#attributions-gallery [data-metric=deletion_auc]") == pytest.approx(deletion["gradcam"])
    page.wait_for_selector("#attributions-scores tr.attributions-current[data-method=gradcam]")
    assert "magnitude map" in page.locator("#attributions-gallery-section .attributions-legend").text_content()

    page.locator("#attributions-gallery figure[data-index='1']").click()  # every method on the second input
    page.wait_for_function(f"() => {MAP}.dataset.index === '1' && {MAP}.data?.[0]?.z?.length === 64")
    assert page.locator("#attributions-compare-section h3").text_content() == f"Every method on input 1: {captions[1]}"
    assert page.locator("#attributions-compare button[data-method]").count() == len(meta[f"{P}/methods"])
    assert page.locator("#attributions-gallery figure.attributions-selected").get_attribute("data-index") == "1"
    page.locator("#attributions-compare button[data-method=rise]").click()  # a tile switches the method
    page.wait_for_function(f"() => {MAP}.dataset.method === 'rise'")
    page.wait_for_selector("#attributions-gallery[data-method=rise]")
    assert page.locator("#attributions-method").input_value() == "rise"
    assert _values(page, "#attributions-gallery [data-metric=deletion_auc]") == pytest.approx(deletion["rise"])

    rows = page.locator("#attributions-scores tr[data-method]")
    assert rows.count() == 15 and rows.nth(0).get_attribute("data-rank") == "1"
    best = rows.nth(0).get_attribute("data-method")
    rows.nth(0).click()  # the scores table switches the method too
    page.wait_for_selector(f"#attributions-gallery[data-method={best}]")
    assert page.locator("#attributions-scores tr.attributions-current").get_attribute("data-method") == best
    assert page.locator("#attributions-sanity-section").count() == 0  # this run has no sanity check
    assert errors == [] and all(url.startswith(tour_dashboard) for url in requests)


def test_text_run_highlights_tokens(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    with RunReader(tour_root / "attention" / "minilm-sentiment") as reader:
        tokens = reader.meta()[f"{TAGS.TEXT}/tokens"]
        scores = reader.tensor(f"{TAGS.TEXT}/scores", 0).tolist()
    errors, requests = open_panel(page, tour_dashboard, "attention/minilm-sentiment", "attributions")
    assert page.locator("p.attributions-text").count() == len(tokens)
    first = page.locator("p.attributions-text[data-index='0'] .attributions-token")
    assert first.all_text_contents() == [t.removeprefix("##") for t in tokens[0]]
    assert first.evaluate_all("nodes => nodes.map(n => n.title)") == [
        ("+" if v > 0 else "") + f"{v:.4f}" for v in scores
    ]
    peak = int(np.argmax(np.abs(scores)))  # the text's strongest token is fully shaded, red for, blue against
    background = first.nth(peak).evaluate("n => getComputedStyle(n).backgroundColor")
    assert background == ("rgb(219, 51, 46)" if scores[peak] > 0 else "rgb(38, 140, 209)")
    assert "integrated gradients" in page.locator("#attributions-text-section h3").text_content()
    assert page.locator("#attributions-gallery-section").count() == 0
    assert errors == [] and all(url.startswith(tour_dashboard) for url in requests)


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    """A sanity-checked comparison whose captions, and a text run whose tokens and classes, are markup."""
    root = tmp_path_factory.mktemp("hostile")
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    compare(
        build_tiny_cnn(), images, methods=["saliency", "gradcam", "guided_backprop"], metrics=("sanity", "deletion"),
        target=[1, 2], captions=[XSS, SCRIPT], generator=torch.Generator().manual_seed(0), steps=8,
    ).record(root / "images", name=XSS)  # fmt: skip
    TokenAttribution(
        scores=(torch.tensor([0.2, -1.0, 0.5]),), tokens=(("[CLS]", XSS, SCRIPT),), target=(0,), predicted=(0,),
        probabilities=torch.tensor([[0.9, 0.1]]), method="saliency", class_names=(XSS, "b"),
    ).record(root / "text", name=SCRIPT)  # fmt: skip
    return root


def test_sanity_curves_and_hostile_strings(hostile_root, chromium_page, open_panel):
    page = chromium_page
    with RunReader(hostile_root / "images") as reader:
        spearman = np.nanmean(reader.tensor(f"{P}/gradcam/sanity/spearman", 0), axis=1).tolist()
        ssim = np.nanmean(reader.tensor(f"{P}/gradcam/sanity/ssim", 0), axis=1).tolist()
        passed = {m: reader.meta()[f"{P}/{m}/sanity"]["passed"] for m in ("saliency", "gradcam", "guided_backprop")}
    with serve_dashboard(hostile_root) as url:
        errors, requests = open_panel(page, url, "images", "attributions")
        assert page.locator("#attributions-gallery .attributions-caption").all_text_contents() == [XSS, SCRIPT]
        page.wait_for_function(f"() => {SANITY}.data?.length === 3")
        traces = page.evaluate(f"{SANITY}.data.map(t => ({{name: t.name, y: t.y}}))")
        assert [t["name"] for t in traces] == [
            f"{m.replace('_', ' ')} ({'passes' if passed[m] else 'fails'})" for m in passed
        ]
        assert traces[1]["y"] == pytest.approx([1.0, *spearman], abs=1e-6)
        assert page.evaluate(f"{SANITY}.layout.shapes.length") == 1  # the verdict's threshold line
        page.select_option("#attributions-measure", "ssim")
        page.wait_for_function(f"() => {SANITY}.dataset.measure === 'ssim'")
        assert page.evaluate(f"{SANITY}.data[1].y") == pytest.approx([1.0, *ssim], abs=1e-6)
        assert page.evaluate(f"{SANITY}.layout.shapes.length") == 0  # the verdict is on spearman only
        page.locator("#attributions-gallery figure[data-index='0']").click()
        page.wait_for_function(f"() => {MAP}.dataset.index === '0'")
        assert page.locator("#attributions-compare-section h3").text_content() == f"Every method on input 0: {XSS}"
        assert "&lt;img" in page.evaluate(f"{MAP}.layout.title.text")  # escaped for Plotly's HTML subset
        page.locator("#runs li[data-run=text] .name").click()
        page.wait_for_selector("p.attributions-text")
        tokens = page.locator("p.attributions-text .attributions-token").all_text_contents()
        assert tokens == ["[CLS]", XSS, SCRIPT]
        assert page.locator("p.attributions-text small").text_content().startswith(f"target {XSS}, predicted {XSS}")
        assert page.locator("#panel img[src='x'], #panel script").count() == 0
        assert page.evaluate("window.__xss === undefined")
        assert errors == [] and all(r.startswith(url) for r in requests)
