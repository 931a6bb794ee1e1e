"""The dataset-explanations panel in headless Chromium: summary, class means, the class filter, single maps."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from conftest import serve_dashboard
from deepscope.store import RunReader
from test_panel_explanations import CLASS_NAMES, write_explained_run

ITEM = "#explanations-item"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The hand-written explanations run (see test_panel_explanations) and the dashboard serving it."""
    root = tmp_path_factory.mktemp("explained-browser")
    write_explained_run(root)
    with serve_dashboard(root) as url:
        yield root, url


def _cells(page, selector):
    return page.locator(selector).all_text_contents()


def test_summary_classes_examples_and_items(served, chromium_page, open_panel):
    page, (root, dashboard) = chromium_page, served
    errors, requests = open_panel(page, dashboard, "run", "explanations")
    assert page.locator("#explanations-name").input_value() == "cam"
    with RunReader(root / "run") as reader:
        size = reader.meta()["explain_dataset/cam"]["bytes"]
    assert 1024 <= size < 1024**2
    assert _cells(page, "#explanations-summary tr:nth-child(2) td") == [
        "gradcam", "features.3", "label", "6 / 10", "3", "ray", "1.25", "4.80", f"{size / 1024:.1f} KiB", "float32",
    ]  # fmt: skip
    assert _cells(page, "#explanations-failed tr:nth-child(2) td") == ["1", "4–7", "2", "<script>boom</script>"]
    assert "4 items have no map" in page.locator("#explanations-summary-section h4").text_content()

    tiles = page.locator("#explanations-classes .explanations-class")
    assert _cells(page, "#explanations-classes .explanations-label") == CLASS_NAMES  # markup stays text
    assert _cells(page, "#explanations-classes .explanations-count") == ["3 items", "2 items", "1 item"]
    assert page.locator("#explanations-classes img[src^='data:image/png;base64,']").count() == 3
    assert page.locator("#panel b, #panel i, #panel script").count() == 0

    examples = page.locator("#explanations-examples .explanations-example")
    assert examples.evaluate_all("nodes => nodes.map(n => n.dataset.position)") == ["0", "1", "9"]
    assert page.locator("#explanations-examples img").count() == 6  # each input and its overlay
    page.select_option("#explanations-class", "0")
    page.wait_for_selector("#explanations-examples[data-cls='0']")
    assert examples.evaluate_all("nodes => nodes.map(n => n.dataset.position)") == ["0", "9"]
    tiles.nth(2).click()  # a class tile filters by its class: no recorded example explains it
    page.wait_for_selector("#explanations-examples[data-cls='2']", state="attached")  # empty
    assert examples.count() == 0 and page.locator("#explanations-class").input_value() == "2"
    assert "No recorded example explains triangle <i>." in _cells(page, "#explanations-examples-section p.muted")
    page.select_option("#explanations-class", "")
    page.wait_for_selector("#explanations-examples[data-cls='']")

    examples.nth(2).click()  # an example's map, read from its shard
    page.wait_for_selector(f"{ITEM}[data-position='9'][data-state=ready]")
    assert page.locator(f"{ITEM} img").count() == 3  # the map, the input and the overlay
    facts = _cells(page, f"{ITEM} tr:nth-child(2) td")
    assert (facts[0], facts[1], facts[3]) == ("9", CLASS_NAMES[0], "2 (shard-00002.npz)")
    page.fill("#explanations-position", "3")
    page.press("#explanations-position", "Enter")
    page.wait_for_selector(f"{ITEM}[data-position='3'][data-state=ready]")
    assert page.locator(f"{ITEM} img").count() == 1 and _cells(page, f"{ITEM} tr:nth-child(2) td")[1] == CLASS_NAMES[2]
    assert errors == [] and all(url.startswith(dashboard) for url in requests)

    page.fill("#explanations-position", "5")  # in the failed shard: the server's 404 shown in place
    page.click("#explanations-show")
    page.wait_for_selector(f"{ITEM}[data-state=error]")
    assert "item 5 has no map: shard 1 (items 4–7) failed after 2 attempt(s)" in page.locator(ITEM).text_content()
    assert len(errors) == 1 and "404" in errors[0]  # the browser logs the refused request, nothing else
    page.fill("#explanations-position", "")
    page.click("#explanations-show")
    page.wait_for_function(f"() => document.querySelector('{ITEM}').textContent.includes('a whole number')")
    assert len(errors) == 1


def test_a_deleted_shard_folder_disables_single_maps(served, chromium_page, open_panel):
    page = chromium_page
    errors, _ = open_panel(page, served[1], "run", "explanations")
    page.select_option("#explanations-name", "gone")
    page.wait_for_selector("#explanations-classes[data-name=gone]")
    assert "Single maps cannot be read: the shard folder" in page.locator("#explanations-item-section").text_content()
    assert page.locator("#explanations-position").count() == 0
    assert _cells(page, "#explanations-summary tr:nth-child(2) td")[3] == "10 / 10"
    assert "Every shard was written" in page.locator("#explanations-summary-section").text_content()
    page.select_option("#explanations-name", "channels")
    page.wait_for_selector("#explanations-examples[data-name=channels]", state="attached")  # empty
    assert "No examples were recorded" in page.locator("#explanations-examples-section").text_content()
    page.fill("#explanations-position", "6")
    page.click("#explanations-show")
    page.wait_for_selector(f"{ITEM}[data-position='6'][data-state=ready]")
    assert _cells(page, f"{ITEM} tr:nth-child(2) td")[4] == "3 × 8 × 8"
    assert errors == []
