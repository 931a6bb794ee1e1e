"""The dashboard in real headless Chromium: two runs overlaid, names shown as text, no errors, no outside requests."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
import uvicorn

from deepscope.server import create_app
from deepscope.store import RunWriter

XSS_NAME = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    for folder, name, scale in (("first", "baseline <script>window.__xss=2</script>", 1.0), ("second", XSS_NAME, 2.0)):
        with RunWriter(root / folder, name=name) as writer:
            for step in range(300):
                writer.add_scalars(step, {"train/loss": scale / (1 + step / 30), "eval/acc": 1 - scale / (2 + step)})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(root), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if srv.started:
            break
        threading.Event().wait(0.01)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


def test_dashboard_overlays_two_runs(server, chromium_page):
    page = chromium_page
    errors, requests = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requests.append(request.url))
    page.set_viewport_size({"width": 1200, "height": 720})
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]")
    boxes = page.locator("#runs input[type=checkbox]")
    assert boxes.count() == 2
    with page.expect_response(lambda r: "/scalars/" in r.url):
        boxes.nth(0).check()
    with page.expect_response(lambda r: "/scalars/" in r.url):
        boxes.nth(1).check()
    page.select_option("#tag", "train/loss")
    page.wait_for_function(
        "() => { const gd = document.getElementById('chart'); "
        "return gd.data?.length === 2 && gd.layout.title.text === 'train/loss'; }"
    )
    traces = page.evaluate(
        "document.getElementById('chart').data.map(t => ({name: t.name, n: t.x.length, y0: t.y[0]}))"
    )
    assert [t["name"] for t in traces] == ["baseline <script>window.__xss=2</script>", XSS_NAME]
    assert [t["n"] for t in traces] == [300, 300] and [t["y0"] for t in traces] == [1.0, 2.0]
    assert page.locator("#runs .name").all_text_contents() == [t["name"] for t in traces]  # shown as text
    assert page.locator("#runs img, #runs script").count() == 0
    assert page.evaluate("window.__xss === undefined")
    assert page.evaluate("document.getElementById('chart').layout.title.text") == "train/loss"

    page.check("#log")  # log scale and smoothing redraw client side
    assert page.evaluate("document.getElementById('chart').layout.yaxis.type") == "log"
    page.fill("#smoothing", "0.9")
    page.dispatch_event("#smoothing", "input")
    assert page.evaluate("document.getElementById('chart').data[0].y[5]") != traces[0]["y0"] / (1 + 5 / 30)

    with page.expect_response(lambda r: "start=10" in r.url and "end=20" in r.url):  # zoom refetches the range
        page.evaluate("Plotly.relayout(document.getElementById('chart'), {'xaxis.range': [10.2, 19.7]})")
    page.wait_for_function("() => document.getElementById('chart').data[0].x.length === 11")

    page.screenshot(path="/tmp/dashboard.png")
    assert not errors, errors
    outside = [url for url in requests if urlparse(url).netloc != urlparse(server).netloc]
    assert not outside, outside
    assert not [url for url in requests if urlparse(url).path == "/x"]  # the <img src=x> never loaded


def test_dashboard_with_token(server, chromium_page):
    """A server without a token ignores it; the page still sends it as a Bearer header to its own API."""
    page = chromium_page
    headers = []
    page.on("request", lambda r: headers.append(r.headers.get("authorization")) if "/api/" in r.url else None)
    page.goto(server + "/?token=abc")
    page.wait_for_selector("body[data-ready=true]")
    assert headers and all(h == "Bearer abc" for h in headers)
