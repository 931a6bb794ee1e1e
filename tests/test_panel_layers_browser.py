"""The layers and feature-visualisation panels in real headless Chromium: interaction, no errors, escaped strings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("fastapi")
import torch
from torch import nn

from conftest import serve_dashboard
from deepscope.store import RunReader

XSS = '<img src=x onerror="window.__xss=1">'
XSS_LAYER = '<img src=x onerror="__xss=2">'  # a module name cannot hold a dot; a bare global assignment does the same
MAPS = "document.querySelector('#layers-maps')"
INVARIANCE = "document.querySelector('#layers-invariance')"
CURVE = "document.querySelector('#featurevis-curve')"


def _outside(requests, base):
    return [url for url in requests if not url.startswith(base)]


def _click_map_tile(page, channel):
    """A real mouse click on the centre of ``channel``'s tile of the feature-map mosaic."""
    point = page.evaluate(
        """(channel) => {
            const gd = document.querySelector('#layers-maps');
            gd.scrollIntoView({ block: "center" });
            const { xaxis, yaxis } = gd._fullLayout;
            const z = gd.data[0].z, custom = gd.data[0].customdata;
            for (let y = 0; y < z.length; y += 1) for (let x = 0; x < z[y].length; x += 1) {
                const cell = custom[y][x];
                if (cell && cell[0] === channel && cell[1] === 2 && cell[2] === 2) {
                    const box = gd.getBoundingClientRect();
                    return [box.left + xaxis._offset + xaxis.l2p(x), box.top + yaxis._offset + yaxis.l2p(y)];
                }
            }
            return null;
        }""",
        channel,
    )
    assert point is not None
    page.mouse.click(*point)


def test_layers_panel_menus_units_and_studies(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "shapes/layers-shapes", "layers")
    assert page.locator("#tabs .tab[data-panel=layers]").text_content() == "Layers"
    page.wait_for_selector("#layers-unit[data-channel='0'] .layers-tile")
    assert page.locator("#layers-layer").input_value() == "features.relu2"
    assert page.locator("#layers-units .layers-unit").count() == 8
    assert page.evaluate(f"[{MAPS}.data[0].z.length, {MAPS}.data[0].z[0].length]") == [2 * 18 - 2, 16 * 18 - 2]

    with RunReader(tour_root / "shapes/layers-shapes") as reader:
        scores = reader.tensor("layers/top/features.relu3/scores", 0)
        indices = reader.tensor("layers/top/features.relu3/indices", 0)
    page.select_option("#layers-layer", "features.relu3")
    page.wait_for_function(f"() => {MAPS}.dataset.layer === 'features.relu3' && {MAPS}.dataset.shown === '64'")
    page.click("#layers-units .layers-unit[data-channel='3']")
    page.wait_for_function(
        "() => document.querySelector('#layers-unit h4')?.textContent === 'Channel 3 of features.relu3'"
    )
    assert page.locator(".layers-unit[data-channel='3']").get_attribute("aria-pressed") == "true"
    captions = page.locator("#layers-unit .layers-tile-caption").all_text_contents()
    assert len(captions) == 9 and page.locator("#layers-unit img.layers-big").count() == 18
    for caption, score, index in zip(captions, scores[3], indices[3], strict=True):
        _, image, value = caption.split(" · ")[:3]
        assert image == f"image {index}" and float(value) == pytest.approx(float(score), rel=1e-3)
    assert page.locator("#layers-stats tr.layers-current").get_attribute("data-layer") == "features.relu3"

    _click_map_tile(page, 5)  # a recorded channel: its unit opens
    page.wait_for_function("() => document.querySelector('#layers-unit')?.dataset.channel === '5'")
    page.wait_for_timeout(400)  # past plotly's double-click delay
    _click_map_tile(page, 20)  # not recorded: says so
    page.wait_for_function(f"() => {MAPS}.dataset.clicked === '20'")
    assert "were not recorded" in page.locator("#layers-unit").text_content()

    page.select_option("#layers-normalize", "per_filter")
    page.wait_for_selector("img.layers-filters[data-normalize=per_filter]")
    page.select_option("#layers-occlusion-index", "1")
    page.wait_for_selector("img.layers-occlusion[data-index='1']")
    assert "a square" in page.locator("#layers-occlusion-section").text_content()
    page.select_option("#layers-transform", "rotation")
    page.wait_for_function(f"() => {INVARIANCE}.dataset.transform === 'rotation'")
    assert page.evaluate(f"{INVARIANCE}.data.length") == 3 * 5 + 1  # 2 layers + p(true class), 5 images, rings
    assert page.evaluate(f"{INVARIANCE}.data[0].x.length") == 25

    page.locator("#runs li[data-run='shapes/layers-photos'] .name").click()  # the layer choice is kept
    page.wait_for_function(
        "() => document.querySelector('#runs li.focus')?.dataset.run === 'shapes/layers-photos' "
        "&& document.body.dataset.panelReady === 'layers'"
    )
    assert page.locator("#layers-layer").input_value() == "features.relu3"
    assert (
        page.locator("#layers-invariance-section").is_hidden() and page.locator("#layers-occlusion-section").is_hidden()
    )
    assert errors == [] and _outside(requests, tour_dashboard) == []


def test_featurevis_panel_results_images_and_curves(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "featurevis/featurevis", "featurevis")
    assert page.locator("#tabs .tab[data-panel=featurevis]").text_content() == "Feature visualisation"
    assert page.locator("#featurevis-images .featurevis-unit").count() == 8
    assert page.locator(".featurevis-label").first.text_content() == "channel 0"
    page.select_option("#featurevis-result", "2")
    page.wait_for_selector("#featurevis-images[data-result='2']")
    assert page.locator(".featurevis-label").all_text_contents() == ["circle", "square", "triangle", "cross"]
    assert page.locator(".featurevis-title").text_content() == "Trained: the image each class logit prefers"
    with RunReader(tour_root / "featurevis/featurevis") as reader:
        curve = reader.tensor("featurevis/2/curve", 0)
    assert page.evaluate(f"{CURVE}.data.length") == 5  # 4 images + their mean
    np.testing.assert_allclose(page.evaluate(f"{CURVE}.data[3].y"), curve[:, 3], rtol=1e-5)
    page.click(".featurevis-unit[data-index='3']")
    page.wait_for_function(f"() => {CURVE}.dataset.picked === '3'")
    assert page.evaluate(f"[{CURVE}.data[3].line.width, {CURVE}.data[0].opacity]") == [3, 0.2]
    rows = page.locator("#featurevis-settings tr").all_text_contents()
    assert "steps24" in rows and "lr0.05" in rows
    assert errors == [] and _outside(requests, tour_dashboard) == []


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.add_module(XSS_LAYER, nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(getattr(self, XSS_LAYER)(self.conv(x)))  # (N, 4, H/2, W/2)
        return self.head(x.mean((2, 3)))


@pytest.fixture
def hostile_root(tmp_path):
    """A layers run and a feature-vis run whose layer, class, label, title and description strings are HTML."""
    from deepscope.featurevis import record_feature_vis
    from deepscope.featurevis.render import FeatureVis
    from deepscope.inspection import inspect_layers
    from deepscope.occlusion import occlusion_study
    from deepscope.robustness import invariance

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _Net().eval()
        images = torch.rand(12, 3, 16, 16)
    names = [XSS, "plain", "third"]
    views = inspect_layers(model, images, [XSS_LAYER], description=XSS)
    study = occlusion_study(model, images[0], XSS_LAYER, target=0, window=6, stride=4, class_names=names)
    curves = invariance(
        model, images[:2], "rotation", values=[0, 90, 180], layers=["conv", XSS_LAYER], labels=[0, 1], class_names=names
    )
    dataclasses.replace(views, occlusion=(study,), invariance=(curves,)).record(tmp_path / "layers", name=XSS)
    result = FeatureVis(torch.rand(2, 3, 16, 16), torch.randn(5, 2), XSS, (XSS, "plain"), {"layer": XSS, "steps": 5})
    record_feature_vis(tmp_path / "fv", {XSS: result}, name=XSS, description=XSS)
    return tmp_path


def test_hostile_strings_are_shown_as_text(hostile_root, chromium_page, open_panel):
    with serve_dashboard(hostile_root) as url:
        page = chromium_page
        errors, requests = open_panel(page, url, "layers", "layers")
        page.wait_for_selector("#layers-unit .layers-tile")
        page.wait_for_function(f"() => {INVARIANCE}.dataset.transform === 'rotation'")
        assert page.locator("#layers-layer option").all_text_contents() == [XSS_LAYER]
        assert page.locator("#layers-unit h4").text_content() == f"Channel 0 of {XSS_LAYER}"
        assert page.locator("#layers-stats td").first.text_content() == XSS_LAYER
        assert XSS in page.locator(".layers-description").text_content()
        assert XSS in page.locator("#layers-occlusion-index option").first.text_content()
        assert f"image 0 ({XSS})" in page.locator("#layers-invariance .legendtext").all_text_contents()
        assert f"distance at {XSS_LAYER}" in page.locator("#layers-invariance .annotation-text").all_text_contents()

        fv = page.context.new_page()
        fv_errors, fv_requests = open_panel(fv, url, "fv", "featurevis")
        fv.wait_for_function(f"() => {CURVE}.data?.length === 3")
        assert fv.locator(".featurevis-title").text_content() == XSS
        assert fv.locator("#featurevis-result option").all_text_contents() == [XSS]
        assert fv.locator(".featurevis-label").all_text_contents() == [XSS, "plain"]
        assert XSS in fv.locator("#featurevis-settings").text_content()
        assert XSS in fv.locator("#featurevis-curve .legendtext").all_text_contents()
        for view in (page, fv):
            assert view.evaluate("window.__xss === undefined")
            assert view.locator("img[src='x']").count() == 0
        assert errors == [] and fv_errors == []
        assert _outside(requests, url) == [] and _outside(fv_requests, url) == []
