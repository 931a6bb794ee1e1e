"""The attention head-view panel, driven in headless Chromium: lines, controls, isolation, offline, XSS-safe."""

import numpy as np
import pytest

from deepscope._attention_panel import head_view_html
from deepscope._report_page import Section, write_page

EVIL_IMG = '<img src=x onerror="window.pwned=1">'
EVIL_SCRIPT = "</script><script>window.pwned=2</script>"
TOKENS_A = ["the", EVIL_IMG, EVIL_SCRIPT, "a\u2028b & <c>", "cat"]
TOKENS_B = ["one", "two", "three", "four", "five"]
LAYERS = ["<b>layer 0</b>", "layer 1"]


def _weights(seed, layers=2, heads=3, tokens=5):
    w = np.random.default_rng(seed).random((layers, heads, tokens, tokens)) ** 4  # many tiny weights
    return w / w.sum(-1, keepdims=True)


W_A, W_B = _weights(0), _weights(1)


def _expected(w, layer, heads, rows=None):
    """(head, query, key) of every line the panel should draw: weights rounded to 3 decimals, ≥ 0.01."""
    rows = range(w.shape[2]) if rows is None else rows
    kept = np.rint(w[layer] * 1000) >= 10
    return {(h, i, j) for h in heads for i in rows for j in range(w.shape[3]) if kept[h, i, j]}


def _drawn(page, panel):
    rows = page.eval_on_selector_all(
        f"#{panel} svg line",
        "ls => ls.map(l => [+l.dataset.head, +l.dataset.query, +l.dataset.key, +l.getAttribute('stroke-opacity')])",
    )
    return {(h, i, j) for h, i, j, _ in rows}, rows


@pytest.fixture
def page(chromium_page):
    """Two panels on one page; every request is recorded and aborted (``page.requests``)."""
    requests = []

    def block(route):
        requests.append(route.request.url)
        route.abort()

    chromium_page.route("**/*", block)
    panels = head_view_html(TOKENS_A, W_A, LAYERS, element_id="A") + head_view_html(
        TOKENS_B, W_B, ["x", "y"], element_id="B-2"
    )
    chromium_page.set_content(f"<!DOCTYPE html><html><body>{panels}</body></html>")
    chromium_page.requests = requests
    yield chromium_page
    assert requests == [], f"the panel made network requests: {requests}"


def test_the_weights_have_lines_to_draw_and_lines_to_skip():
    kept = np.rint(W_A * 1000) >= 10
    assert kept.any() and not kept.all()  # otherwise the threshold below is never exercised


def test_lines_follow_the_layer_and_head_controls(page):
    for panel in ("A", "B-2"):  # each panel holds its own controls
        assert page.locator(f"#{panel} input[type=checkbox]:checked").count() == 3
        assert page.locator(f"#{panel} option").count() == 2
    lines, rows = _drawn(page, "A")
    assert lines == _expected(W_A, 0, range(3))
    assert all(abs(op - W_A[0, h, i, j]) <= 5e-4 for h, i, j, op in rows)  # opacity = weight (3 decimals)

    page.select_option("#A-layer", "1")
    assert _drawn(page, "A")[0] == _expected(W_A, 1, range(3)) != _expected(W_A, 0, range(3))

    page.uncheck("#A-head-1")
    assert _drawn(page, "A")[0] == _expected(W_A, 1, [0, 2])
    assert _drawn(page, "B-2")[0] == _expected(W_B, 0, range(3))  # the other panel keeps its own state

    page.check("#A-head-1")
    assert _drawn(page, "A")[0] == _expected(W_A, 1, range(3))


def test_hovering_a_query_token_shows_only_its_row_and_clicking_keeps_it(page):
    token = page.locator("#A text.ds-attn-query").nth(3)
    token.hover()
    assert _drawn(page, "A")[0] == _expected(W_A, 0, range(3), rows=[3])
    assert _drawn(page, "B-2")[0] == _expected(W_B, 0, range(3))

    page.hover("#A-layer")  # leaving the token restores every row
    assert _drawn(page, "A")[0] == _expected(W_A, 0, range(3))

    token.click()
    page.hover("#A-layer")
    assert _drawn(page, "A")[0] == _expected(W_A, 0, range(3), rows=[3])  # pinned
    token.click()
    page.hover("#A-layer")
    assert _drawn(page, "A")[0] == _expected(W_A, 0, range(3))


def test_tokens_and_layer_names_are_text_never_markup(page):
    for kind in ("query", "key"):
        assert page.locator(f"#A text.ds-attn-{kind}").all_text_contents() == TOKENS_A
    assert page.locator("#A-layer option").all_text_contents() == LAYERS
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("img, b").count() == 0
    # the request monitor works: a real request would be caught and fail the test
    page.evaluate("fetch('http://example.invalid/x').catch(() => null)")
    page.wait_for_timeout(50)
    assert page.requests == ["http://example.invalid/x"]
    page.requests.clear()


def test_data_block_escapes_everything_that_could_end_it():
    html = str(head_view_html(TOKENS_A, W_A, LAYERS, element_id="A"))
    data = html.split('<script type="application/json">')[1].split("</script>")[0]
    assert not set("<>&\u2028\u2029") & set(data)
    assert "\\u003c/script\\u003e\\u003cscript\\u003ewindow.pwned=2" in data
    assert html.count("<script") == 2 and "<img" not in html


def test_page_size_stays_as_documented():
    w = np.exp(2 * np.random.default_rng(0).normal(size=(6, 12, 16, 16)))
    html = head_view_html([f"token{i}" for i in range(16)], w / w.sum(-1, keepdims=True), list("abcdef"))
    assert 50_000 < len(html.encode()) < 65_000  # "6 layers × 12 heads × 16 tokens give 58–64 kB"


@pytest.mark.parametrize(
    ("tokens", "weights", "layers", "element_id", "match"),
    [
        (TOKENS_A[:4], W_A, LAYERS, "ok", r"got 4 tokens for weights shaped \(2, 3, 5, 5\).*\(5\)"),
        (TOKENS_A, W_A, LAYERS[:1], "ok", r"got 1 layer names .* one per layer \(2\)"),
        (TOKENS_A, W_A[0], LAYERS, "ok", r"4-D array \(layers, heads, queries, keys\).*got shape \(3, 5, 5\)"),
        (TOKENS_A, W_A[..., :4], LAYERS, "ok", r"as many queries as keys; got shape \(2, 3, 5, 4\)"),
        (TOKENS_A, W_A * np.nan, LAYERS, "ok", "NaN or infinite"),
        (TOKENS_A, W_A, LAYERS, 'x"><script>', r"element_id 'x\"><script>' is not valid: use .*A-Z"),
        (TOKENS_A, W_A, LAYERS, "two words", "element_id 'two words' is not valid"),
        (TOKENS_A, W_A, LAYERS, "", "element_id '' is not valid"),
    ],
)
def test_invalid_arguments_say_what_is_wrong(tokens, weights, layers, element_id, match):
    with pytest.raises(ValueError, match=match):
        head_view_html(tokens, weights, layers, element_id=element_id)


def test_a_section_widget_is_written_verbatim_and_the_rest_stays_escaped(tmp_path):
    panel = head_view_html(TOKENS_A, W_A, LAYERS, element_id="report-panel")
    section = Section("att", "<i>title</i>", ("<b>paragraph</b>",), notes=("<u>note</u>",), widgets=(panel,))
    page = write_page(tmp_path / "r.html", "<em>page</em>", [section]).read_text(encoding="utf-8")
    assert str(panel) in page
    for raw in ("<i>title</i>", "<b>paragraph</b>", "<u>note</u>", "<em>page</em>"):
        assert raw not in page
    assert "&lt;b&gt;paragraph&lt;/b&gt;" in page and "&lt;i&gt;title&lt;/i&gt;" in page


def test_the_panel_runs_inside_a_report_page_whose_policy_blocks_every_other_script(tmp_path, chromium_page):
    from markupsafe import Markup

    panel = head_view_html(TOKENS_A, W_A, LAYERS, element_id="report-panel")
    foreign = Markup("<script>window.pwned = 3</script>")  # a script the page did not vouch for by hash...
    section = Section("att", "Attention", ("text",), widgets=(panel,))
    path = write_page(tmp_path / "r.html", "page", [section])
    tampered = tmp_path / "tampered.html"
    tampered.write_text(path.read_text(encoding="utf-8").replace("</body>", f"{foreign}</body>"), encoding="utf-8")
    chromium_page.goto(tampered.as_uri())
    assert _drawn(chromium_page, "report-panel")[0] == _expected(W_A, 0, range(3))  # allowed by its hash
    assert chromium_page.evaluate("window.pwned") is None  # ...is refused by the policy


def test_the_first_view_shows_the_layer_and_heads_asked_for(chromium_page):
    chromium_page.set_content(
        f"<html><body>{head_view_html(TOKENS_B, W_B, ['x', 'y'], element_id='C', layer=1, heads=[2])}</body></html>"
    )
    assert chromium_page.input_value("#C-layer") == "1"
    assert chromium_page.locator("#C input[type=checkbox]:checked").count() == 1 and chromium_page.is_checked(
        "#C-head-2"
    )
    assert _drawn(chromium_page, "C")[0] == _expected(W_B, 1, [2])
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.1 and heads in 0\.\.2"):
        head_view_html(TOKENS_B, W_B, ["x", "y"], heads=[3])
