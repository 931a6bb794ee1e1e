"""The findings and footprint panels in a real Chromium: cards, filter, evidence figures, split items, and no XSS."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from conftest import serve_dashboard
from deepscope._manifest import split_manifest
from deepscope._tags import TAGS
from deepscope.footprint import estimate
from deepscope.store import RunReader, RunWriter

pytest.importorskip("fastapi")

XSS = '<img src=x onerror="window.__xss=1">'
LOADED = "[...document.querySelectorAll('.findings-image')].filter((i) => i.complete && i.naturalWidth > 0).length"


def _local(requests: list[str], url: str) -> None:
    assert requests and all(request.startswith(url) for request in requests), requests


def test_findings_cards_filter_and_link(tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "digits/sigmoid-mlp", "findings")
    assert page.inner_text(".findings-summary") == "4 findings from 15 checks: 2 errors, 2 warnings, 0 notes."
    cards = page.locator(".findings-card")
    assert [cards.nth(i).get_attribute("data-severity") for i in range(4)] == ["error", "error", "warning", "warning"]
    assert page.evaluate(LOADED) == 4  # every evidence figure arrived as a data: URI and decoded
    assert page.get_attribute('.findings-chip[data-check="vanishing_gradients"]', "data-status") == "error"
    assert page.locator('.findings-chip[data-status="passed"]').count() == 11
    first = page.locator('.findings-card[data-check="vanishing_gradients"]')
    assert "use ReLU-family activations" in first.locator(".findings-actions").inner_text()
    assert first.locator('tr[data-key="median_ratio_last_half"] td').inner_text() == "7.82e-7"

    page.select_option("#findings-severity", "warning")
    page.wait_for_selector('.findings-cards[data-shown="2"][data-figures="ready"]')
    shown = page.locator(".findings-card")
    assert {shown.nth(i).get_attribute("data-check") for i in range(2)} == {"plateau", "update_ratio"}
    assert page.evaluate(LOADED) == 2
    assert sum("/api/findings/figure" in r for r in requests) == 4  # the filter redraws the figures from memory

    page.click('.findings-card[data-check="plateau"] button.findings-steps')
    page.wait_for_selector("body[data-panel-ready=scalars]")
    page.click('#tabs [data-panel="findings"]')
    page.wait_for_selector("body[data-panel-ready=findings]")
    assert page.input_value("#findings-severity") == "warning"  # the filter is remembered
    assert page.locator(".findings-card").count() == 2
    assert errors == []
    _local(requests, tour_dashboard)


def test_findings_of_a_healthy_run(tour_dashboard, chromium_page, open_panel):
    errors, requests = open_panel(chromium_page, tour_dashboard, "digits/cnn", "findings")
    assert chromium_page.inner_text(".findings-summary") == "No findings from 15 checks."
    assert chromium_page.locator('.findings-chip[data-status="passed"]').count() == 15
    assert chromium_page.locator(".findings-card").count() == 0
    assert errors == []
    _local(requests, tour_dashboard)


def test_footprint_panel(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    errors, requests = open_panel(page, tour_dashboard, "digits/cnn", "footprint")
    with RunReader(tour_root / "digits" / "cnn") as reader:
        meta = reader.meta()
    env = meta[TAGS.ENVIRONMENT]
    recipe = page.inner_text(".footprint-recipe")
    assert f"torch=={env['versions']['torch']}" in recipe and shlex.join(env["argv"][1:]) in recipe
    commit = page.locator('.footprint-env-part[data-part="Code"] td').nth(1).inner_text()
    assert commit == (env["git"]["commit"] if env.get("git") else "not in a git repository")
    assert page.locator(".footprint-tile").count() == 4
    assert page.inner_text('.footprint-tile[data-quantity="energy"] .footprint-value').endswith("Wh")
    assert meta[TAGS.FOOTPRINT]["method"] in page.inner_text(".footprint-method")
    assert page.locator(".footprint-equivalents li").count() == 2

    page.click('.footprint-split-table tr[data-split="held out"] button')
    page.wait_for_selector('.footprint-items-body[data-split="held out"]')
    hashes = meta[f"{TAGS.MANIFEST}/split/held out"]["hashes"]
    rows = page.locator(".footprint-item-table tr")
    assert rows.count() == 21 and rows.nth(1).locator("td").nth(2).inner_text() == hashes[0]
    page.click(".footprint-next")
    page.wait_for_selector("text=items 21–40 of 297")
    assert page.locator(".footprint-item-table tr").nth(1).locator("td").nth(2).inner_text() == hashes[20]
    assert errors == []
    _local(requests, tour_dashboard)


@pytest.fixture
def xss_root(tmp_path):
    folder = tmp_path / "xss"
    plot = {"kind": "bars", "title": XSS, "x_label": XSS, "y_label": "share", "series": [[XSS, [XSS], [0.5]]]}
    with RunWriter(folder, name=XSS) as writer:
        evidence = {"values": {XSS: XSS}, "category": XSS, "plot": plot}
        writer.add_finding(XSS, "error", XSS, evidence, step_start=1, step_end=3, actions=[XSS])
        writer.set_meta(TAGS.DOCTOR_CHECKS, [XSS, "dead_units"])
        git = {"commit": XSS, "dirty": True, "root": XSS}
        env = {"python": XSS, "argv": [XSS], "cwd": XSS, "git": git, "versions": {XSS: XSS, "torch": XSS}, "cpu": XSS}
        env |= {"env": {"OMP_NUM_THREADS": XSS}, "seed": {"seed": XSS}}
        writer.set_meta(TAGS.ENVIRONMENT, env)
        footprint = estimate(10, power_w=5).as_dict()
        writer.set_meta(TAGS.FOOTPRINT, {**footprint, "method": XSS, "constants": {XSS: XSS}})
    split_manifest({XSS: np.arange(4).reshape(2, 2)}).record(folder)
    return tmp_path


def test_user_strings_are_text(xss_root, chromium_page, open_panel):
    page = chromium_page
    with serve_dashboard(xss_root) as url:
        errors, requests = open_panel(page, url, "xss", "findings")
        assert page.evaluate(LOADED) == 1  # the panel is ready once its figures are
        card = page.locator(".findings-card")
        for part in (".findings-title", ".findings-check", ".findings-actions li", ".findings-evidence th"):
            assert card.locator(part).first.inner_text() == XSS, part
        assert page.locator('.findings-chip[data-status="error"]').inner_text().endswith(XSS)
        with page.expect_response(lambda response: "/api/version" in response.url):
            pass  # the shell has polled the run's version once: the next change is seen
        with RunWriter(xss_root / "xss") as writer:  # the open panel follows the live run
            writer.add_finding("late", "warning", "a later finding", {"values": {}})
        page.wait_for_selector('.findings-cards[data-shown="2"][data-figures="ready"]')
        assert page.inner_text(".findings-summary").startswith("2 findings from 2 checks")
        page.click('#tabs [data-panel="footprint"]')
        page.wait_for_selector("body[data-panel-ready=footprint]")
        page.click(".footprint-split-table tr button")
        page.wait_for_selector(".footprint-item-table")
        text = page.inner_text("#panel")
        assert text.count(XSS) >= 10  # recipe, environment, method, constant, split name…
        assert XSS in page.inner_text(".footprint-recipe") and XSS in page.inner_text(".footprint-method")
        assert page.inner_text(".footprint-split-table tr[data-split] td") == XSS
        assert page.evaluate("window.__xss") is None
        assert page.locator("#panel img:not(.findings-image)").count() == 0  # no <img> made from a string
        assert errors == []
        _local(requests, url)
