"""The attention panel in headless Chromium: menus, head view lines, heat maps, rollout, live refresh, XSS-safe."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from conftest import serve_dashboard
from deepscope.store import RunReader, RunWriter

RUN = "attention/minilm"
XSS_TOKEN = '<img src=x onerror="window.__xss=1">'
XSS_LAYER = "<b>enc</b><img src=x onerror=window.__xss=2>"
LINES = "#attention-headview line"


def _short(text):
    """A token as the charts' axes show it (shortened past 20 characters)."""
    return text if len(text) <= 20 else text[:19] + "…"


def _drawn(page):
    """``{(head, query, key)}`` of the head view's lines."""
    rows = page.eval_on_selector_all(LINES, "ls => ls.map(l => [+l.dataset.head, +l.dataset.query, +l.dataset.key])")
    return {tuple(row) for row in rows}


def _expected(weights, heads, rows=None):
    """The lines the head view should draw: the weights as served (4 decimals), those ≥ 0.01."""
    kept = np.round(weights.astype(np.float64), 4) >= 0.01  # (H, T, T)
    rows = range(weights.shape[1]) if rows is None else rows
    return {(h, i, j) for h in heads for i in rows for j in range(weights.shape[2]) if kept[h, i, j]}


def _cell(page, node, x, y):
    """The page coordinates of data point ``(x, y)`` of the Plotly chart ``node`` (a CSS selector), scrolled to."""
    page.locator(node).scroll_into_view_if_needed()
    return page.evaluate(
        """([sel, x, y]) => { const n = document.querySelector(sel), l = n._fullLayout, r = n.getBoundingClientRect();
        return [r.left + l.xaxis._offset + l.xaxis.l2p(x), r.top + l.yaxis._offset + l.yaxis.l2p(y)]; }""",
        [node, x, y],
    )


def test_head_view_heat_maps_and_rollout_follow_the_controls(tour_root, tour_dashboard, chromium_page, open_panel):
    page = chromium_page
    with RunReader(tour_root / RUN) as reader:
        weights = reader.tensor("attention/weights", 0)  # (L, H, T, T) float16
        rolled = reader.tensor("attention/rollout", 0)
        meta = reader.meta()
    tokens, view = meta["attention/tokens"], meta["attention/view"]
    errors, requests = open_panel(page, tour_dashboard, RUN, "attention")

    # the menus: the recorded text, the recorded layer and heads
    assert page.locator("#attention-example option").all_text_contents() == [
        f"#0 · {len(tokens)} tokens · {' '.join(tokens)}"
    ]
    assert page.locator("#attention-layer").input_value() == str(view["layer"])
    assert page.locator("#attention-heads input:checked").count() == len(view["heads"])
    ticked = [
        int(h) for h in page.eval_on_selector_all("#attention-heads input:checked", "bs => bs.map(b => b.dataset.head)")
    ]
    assert sorted(ticked) == sorted(view["heads"])
    assert page.locator("#attention-headview text.attention-query").all_text_contents() == tokens
    assert _drawn(page) == _expected(weights[view["layer"]], view["heads"])

    # hover a query token: only its row; click keeps it after the pointer leaves
    page.hover("#attention-headview text.attention-query[data-index='2']")
    assert _drawn(page) == _expected(weights[view["layer"]], view["heads"], rows=[2])
    page.click("#attention-headview text.attention-query[data-index='2']")
    page.mouse.move(5, 5)
    assert page.locator("#attention-headview").get_attribute("data-focus") == "2"
    assert _drawn(page) == _expected(weights[view["layer"]], view["heads"], rows=[2])
    page.click("#attention-headview text.attention-query[data-index='2']")  # unpin
    page.mouse.move(5, 5)
    assert _drawn(page) == _expected(weights[view["layer"]], view["heads"])

    # another layer and one head less
    with page.expect_response(lambda r: "/api/attention/layer" in r.url and "layer=1" in r.url):
        page.select_option("#attention-layer", "1")
    page.wait_for_selector("#attention[data-layer='1']")
    page.uncheck(f"#attention-head-{view['heads'][0]}")
    rest = view["heads"][1:]
    assert _drawn(page) == _expected(weights[1], rest) != _expected(weights[1], view["heads"])
    page.click("button[data-heads=all]")
    assert _drawn(page) == _expected(weights[1], range(weights.shape[1]))

    # the heat map shows the chosen head of the chosen layer, tokens on both axes
    page.select_option("#attention-head", "3")
    matrix = page.evaluate("(() => { const d = document.querySelector('#attention-matrix').data[0]; return d.z; })()")
    np.testing.assert_allclose(matrix, weights[1, 3].astype(np.float64), atol=5.1e-5)
    assert page.locator("#attention-matrix .xtick text").all_text_contents() == tokens
    assert page.locator("#attention-matrix .gtitle").text_content() == "layer 1 · head 3: query → key"

    # click an entropy cell: that layer and head everywhere
    with page.expect_response(lambda r: "/api/attention/layer" in r.url and "layer=4" in r.url):
        page.mouse.click(*_cell(page, "#attention-entropy", 7, 4))
    page.wait_for_selector("#attention[data-layer='4'][data-head='7']")
    assert page.locator("#attention-layer").input_value() == "4"
    assert page.locator("#attention-head").input_value() == "7"
    assert page.locator("#attention-matrix .gtitle").text_content() == "layer 4 · head 7: query → key"

    # rollout: the first token's row, then another row
    bars = page.evaluate("document.querySelector('#attention-rollout').data[0].y")
    np.testing.assert_allclose(bars, rolled[0], atol=1e-6)
    page.select_option("#attention-rollout-row", "5")
    bars = page.evaluate("document.querySelector('#attention-rollout').data[0].y")
    np.testing.assert_allclose(bars, rolled[5], atol=1e-6)
    assert tokens[5] in page.locator("#attention-rollout .gtitle").text_content()

    # the report's model view, loaded when opened
    page.click("#attention-model-view summary")
    src = page.wait_for_selector("#attention-model-view img", timeout=30_000).get_attribute("src")  # matplotlib
    assert src.startswith("data:image/png;base64,")

    assert errors == []
    assert all(url.startswith(tour_dashboard) for url in requests), requests


def _write_example(run_dir, step, tokens, seed):
    """Another example, written as :meth:`Attention.record` writes one (``attention/`` tags) at ``step``.

    ``tokens`` is one token list per example (the run's ``attention/tokens`` then holds one list per step).
    """
    import torch

    from deepscope.attention import rollout

    count = len(tokens[-1])
    w = np.random.default_rng(seed).random((2, 2, count, count)) ** 2
    w = (w / w.sum(-1, keepdims=True)).astype(np.float32)
    with RunWriter(run_dir, name="evil attention") as writer:
        writer.set_meta("attention/tokens", tokens)
        writer.add_tensor("attention/weights", step, w.astype(np.float16))
        writer.add_tensor("attention/rollout", step, rollout(torch.from_numpy(w)).numpy())
        writer.add_tensor("attention/entropy", step, -(w * np.log(w)).sum(-1).mean(-1))
    return w


def test_tokens_and_layer_names_are_text_and_a_new_example_appears_live(tmp_path, chromium_page, open_panel):
    import torch

    from deepscope.attention import Attention

    tokens = ["the", XSS_TOKEN, "a & b", "</script><script>window.__xss=3</script>"]
    w = torch.softmax(torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(0)).repeat(1, 2, 1, 1), -1)
    result = Attention(
        per_layer=(w, w.flip(-1)),
        mask=torch.ones(1, 4, dtype=bool),
        layers=("layer 0", XSS_LAYER),
        tokens=(tuple(tokens),),
    )
    run_dir = result.record(tmp_path / "evil", name="evil attention")
    page = chromium_page
    with serve_dashboard(tmp_path) as url:
        errors, requests = open_panel(page, url, "evil", "attention")
        assert page.locator("#attention-headview text.attention-query").all_text_contents() == tokens
        assert page.locator("#attention-headview text.attention-key").all_text_contents() == tokens
        assert XSS_TOKEN in page.locator("#attention-example option").first.text_content()
        assert page.locator("#attention-layer option").all_text_contents() == ["layer 0", XSS_LAYER]
        ticks = [_short(t) for t in tokens]  # escaped for Plotly, so shown as is
        assert ticks[1] == "<img src=x onerror=…" and ticks[2] == "a & b"
        assert page.locator("#attention-matrix .xtick text").all_text_contents() == ticks
        assert page.locator("#attention-matrix .ytick text").all_text_contents() == ticks
        assert page.locator("#attention-rollout .xtick text").all_text_contents() == ticks
        assert page.locator("#attention-entropy .ytick text").all_text_contents() == ["layer 0", _short(XSS_LAYER)]
        assert XSS_LAYER in page.locator("#attention-matrix .gtitle").text_content()  # the recorded layer: the last
        page.mouse.move(*_cell(page, "#attention-matrix", 1, 2))  # hover: the whole tokens, as text
        hover = page.wait_for_selector("#attention-matrix .hoverlayer .hovertext").text_content()
        assert f"query {tokens[2]}" in hover and f"key {XSS_TOKEN}" in hover
        page.select_option("#attention-rollout-row", "1")
        assert XSS_TOKEN in page.locator("#attention-rollout .gtitle").text_content()
        assert page.locator("#panel img").count() == 0 and page.locator("#panel b").count() == 0

        # the run grows a second example: refresh() (the store changed) lists it, and it can be opened
        with page.expect_response(lambda r: "/api/version" in r.url, timeout=5_000):
            pass  # the dashboard has seen the store as it was (it polls every 2 s)
        added = _write_example(run_dir, 5, [tokens, ["one", "two", "three"]], seed=1)
        page.wait_for_function(
            "() => document.querySelectorAll('#attention-example option').length === 2", timeout=10_000
        )
        with page.expect_response(lambda r: "/api/attention/rollout" in r.url and "example=5" in r.url):
            page.select_option("#attention-example", "5")
        page.wait_for_selector("#attention[data-example='5']")
        assert page.locator("#attention-headview text.attention-query").all_text_contents() == ["one", "two", "three"]
        matrix = page.evaluate("document.querySelector('#attention-matrix').data[0].z")
        head = int(page.locator("#attention-head").input_value())
        np.testing.assert_allclose(matrix, added[1, head], atol=1e-3)  # the run's view layer (1), float16 storage

        assert page.evaluate("window.__xss") is None
        assert errors == []
        assert all(r.startswith(url) for r in requests), requests
