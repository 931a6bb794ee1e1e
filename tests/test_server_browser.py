"""The dashboard shell in real Chromium: runs overlaid, names as text, live updates, no errors or outside requests."""

from __future__ import annotations

import html
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")

from conftest import serve_dashboard
from deepscope.store import RunWriter

XSS_NAME = '<img src=x onerror="window.__xss=1">'
SCRIPT_NAME = "baseline <script>window.__xss=2</script>"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    for folder, name, scale in (("first", SCRIPT_NAME, 1.0), ("second", XSS_NAME, 2.0)):
        with RunWriter(root / folder, name=name) as writer:
            for step in range(300):
                writer.add_scalars(step, {"train/loss": scale / (1 + step / 30), "eval/acc": 1 - scale / (2 + step)})
    return root


@pytest.fixture(scope="module")
def server(root):
    with serve_dashboard(root) as url:
        yield url


def _watch(page):
    errors, requests = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requests.append(request.url))
    return errors, requests


CHART = "document.querySelector('.chart')"


def test_dashboard_overlays_two_runs(server, chromium_page, tmp_path):
    page = chromium_page
    errors, requests = _watch(page)
    page.set_viewport_size({"width": 1200, "height": 720})
    page.goto(server + "/")
    page.wait_for_selector("body[data-panel-ready=scalars]")
    assert page.locator("#runs li.focus .name").text_content() == SCRIPT_NAME  # the first run opens
    assert page.locator("#tabs .tab").all_text_contents()[0] == "Scalars"
    with page.expect_response(lambda r: "/api/scalars/series" in r.url and "run=second" in r.url):
        page.locator("#runs li[data-run=second] input[type=checkbox]").check()
    page.wait_for_selector("body[data-panel-ready=scalars]")
    page.select_option("#tag", "train/loss")
    page.wait_for_function(f"() => {CHART}?.data?.length === 2 && {CHART}.layout.title.text === 'train/loss'")
    traces = page.evaluate(f"{CHART}.data.map(t => ({{name: t.name, n: t.x.length, y0: t.y[0]}}))")
    assert [t["name"] for t in traces] == [html.escape(SCRIPT_NAME, quote=False), html.escape(XSS_NAME, quote=False)]
    assert page.locator(".legendtext").all_text_contents() == [SCRIPT_NAME, XSS_NAME]  # plotly shows them as text
    assert [t["n"] for t in traces] == [300, 300] and [t["y0"] for t in traces] == [1.0, 2.0]
    assert page.locator("#runs .name").all_text_contents() == [SCRIPT_NAME, XSS_NAME]  # shown as text
    assert page.locator("#runs img, #runs script").count() == 0
    assert page.evaluate("window.__xss === undefined")
    assert "run=first" in page.url and "compare=second" in page.url  # the view is in the URL

    page.check("#log")  # log scale and smoothing redraw client side
    assert page.evaluate(f"{CHART}.layout.yaxis.type") == "log"
    page.fill("#smoothing", "0.9")
    page.dispatch_event("#smoothing", "input")
    assert page.evaluate(f"{CHART}.data[0].y[5]") != traces[0]["y0"] / (1 + 5 / 30)

    with page.expect_response(lambda r: "start=10" in r.url and "end=20" in r.url):  # zoom refetches the range
        page.evaluate(f"Plotly.relayout({CHART}, {{'xaxis.range': [10.2, 19.7]}})")
    page.wait_for_function(f"() => {CHART}?.data[0].x.length === 11")

    page.locator("#runs li[data-run=second] .name").click()  # switch runs: the tag choice is kept
    page.wait_for_function("() => document.querySelector('#runs li.focus')?.dataset.run === 'second'")
    page.wait_for_function(f"() => {CHART}?.data?.[0]?.x.length === 300 && {CHART}.layout.title.text === 'train/loss'")
    assert page.locator(".legendtext").all_text_contents() == [XSS_NAME, SCRIPT_NAME]

    page.screenshot(path=str(tmp_path / "dashboard.png"))
    assert not errors, errors
    outside = [url for url in requests if urlparse(url).netloc != urlparse(server).netloc]
    assert not outside, outside
    assert not [url for url in requests if urlparse(url).path == "/x"]  # the <img src=x> never loaded


def test_hash_reopens_the_view(server, chromium_page):
    page = chromium_page
    page.goto(server + "/#run=second&panel=scalars&compare=first")
    page.wait_for_selector("body[data-panel-ready=scalars]")
    assert page.locator("#runs li.focus").get_attribute("data-run") == "second"
    page.wait_for_function(f"() => {CHART}?.data?.length === 2")
    assert page.locator(".legendtext").all_text_contents() == [XSS_NAME, SCRIPT_NAME]


def test_live_run_updates_the_chart(tmp_path, chromium_page):
    """Points a live writer commits appear without a reload (the page polls the run's version)."""
    page = chromium_page
    writer = RunWriter(tmp_path / "live", name="live", flush_seconds=0.05)
    try:
        for step in range(20):
            writer.add_scalar("train/loss", step, 1.0 / (step + 1))
        writer.flush()
        with serve_dashboard(tmp_path) as url:
            page.goto(url + "/")
            page.wait_for_function(f"() => {CHART}?.data?.[0]?.x.length === 20")
            page.wait_for_selector("#live:not([hidden])")  # the run is marked live
            for step in range(20, 50):
                writer.add_scalar("train/loss", step, 1.0 / (step + 1))
            writer.flush()
            page.wait_for_function(f"() => {CHART}?.data[0].x.length === 50", timeout=8_000)
    finally:
        writer.close()


def test_dashboard_with_token(tmp_path, root, chromium_page):
    """With --token the page passes its own ?token= to the API as a Bearer header; without it the API refuses."""
    page = chromium_page
    headers = []
    page.on("request", lambda r: headers.append(r.headers.get("authorization")) if "/api/" in r.url else None)
    with serve_dashboard(root, token="abc") as url:
        page.goto(url + "/?token=abc")
        page.wait_for_selector("body[data-panel-ready=scalars]")
        assert headers and all(h == "Bearer abc" for h in headers)
        page.goto(url + "/?token=wrong")
        page.wait_for_selector("#status.error")
        assert "401" in page.locator("#status").text_content()


def test_runs_are_grouped_by_folder_and_filtered(tmp_path, chromium_page):
    for folder, name in (("exp <b>1</b>/a", "alpha"), ("exp <b>1</b>/b", "beta"), ("other/c", "gamma")):
        with RunWriter(tmp_path / folder, name=name) as writer:
            writer.add_scalar("train/loss", 0, 1.0)
    page = chromium_page
    errors, _ = _watch(page)
    with serve_dashboard(tmp_path) as url:
        page.goto(url + "/")
        page.wait_for_selector("body[data-panel-ready=scalars]")
        assert page.locator("#runs li.group").all_text_contents() == ["exp <b>1</b>", "other"]  # as text
        assert page.locator("#runs .name").all_text_contents() == ["alpha", "beta", "gamma"]
        page.fill("#run-filter", "GAM")
        assert page.locator("#runs .name").all_text_contents() == ["alpha", "gamma"]  # the open run stays
        assert page.locator("#runs li.muted").text_content() == "1 run hidden by the filter"
        page.fill("#run-filter", "other c")  # every word must match
        assert page.locator("#runs .name").all_text_contents() == ["alpha", "gamma"]
        page.fill("#run-filter", "")
        assert page.locator("#runs .name").count() == 3
        assert page.locator("#runs b").count() == 0
    assert not errors, errors
