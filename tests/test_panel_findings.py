"""The findings panel: its ``*_impl`` functions on the tour's runs and on hand-made ones, and its HTTP routes."""

from __future__ import annotations

import base64
import json
import math

import pytest

from deepscope._diagnosis import Finding
from deepscope._finding_plots import finding_figure
from deepscope._tags import TAGS
from deepscope.server._figures import png_uri
from deepscope.server.panels.findings import PANEL, figure_impl, list_impl
from deepscope.store import RunReader, RunWriter

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope.server import create_app

PLOT = {
    "kind": "lines",
    "title": "Loss",
    "x_label": "training step",
    "y_label": "loss",
    "series": [["loss", [0, 1, 2], [1.0, None, 0.5]]],
    "references": [],
    "log_y": False,
    "span": [0, 2],
    "y_limits": None,
}


def _strict(text: str) -> object:
    """JSON as a browser parses it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in the answer")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """A run with findings but no record of the checks that ran, an unknown severity and a NaN in the evidence."""
    folder = tmp_path_factory.mktemp("findings") / "handmade"
    with RunWriter(folder, name="handmade") as writer:
        writer.add_finding("custom", "critical", "an odd severity", {"values": {}}, actions=["look"])
        writer.add_finding("plotless", "info", "no plot", {"values": {"ratio": float("nan"), "n": 3}})
        writer.add_finding(
            "plotted", "warning", "with a plot", {"values": {"x": 1.5}, "plot": PLOT}, step_start=0, step_end=2
        )
    return folder


def test_list_holds_the_stored_findings_most_severe_first(tour_root):
    with RunReader(tour_root / "digits" / "sigmoid-mlp") as reader:
        answer = list_impl(reader)
        stored = reader.findings()
        checks = reader.meta()[TAGS.DOCTOR_CHECKS]
    assert answer["diagnosed"] and answer["checks"] == checks and len(checks) == 15
    assert answer["total"] == len(stored) == len(answer["findings"]) == 4
    severities = [card["severity"] for card in answer["findings"]]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert (
        answer["counts"]
        == {s: sum(r.severity == s for r in stored) for s in ("error", "warning", "info")}
        == {"error": 2, "warning": 2, "info": 0}
    )
    by_check = {record.check: record for record in stored}
    assert set(by_check) == {"vanishing_gradients", "underfitting", "plateau", "update_ratio"}
    for i, card in enumerate(answer["findings"]):
        record = by_check[card["check"]]
        assert card["index"] == i
        assert (card["severity"], card["title"], card["actions"]) == (record.severity, record.title, record.actions)
        assert card["evidence"] == record.evidence["values"]
        assert card["category"] == record.evidence["category"]
        assert (card["step_start"], card["step_end"]) == (record.step_start, record.step_end)
        assert card["steps"] == f"{record.step_start}–{record.step_end}"
        assert card["has_plot"] and card["plot_title"] == record.evidence["plot"]["title"]
    assert answer["raised"] == {card["check"]: card["severity"] for card in answer["findings"]}
    vanishing = next(c for c in answer["findings"] if c["check"] == "vanishing_gradients")
    assert vanishing["evidence"]["median_ratio_last_half"] < 1e-3  # the number itself, not "0.000"


def test_severity_filter_keeps_indices_of_the_full_list(tour_root):
    with RunReader(tour_root / "digits" / "sigmoid-mlp") as reader:
        full = list_impl(reader)
        warnings = list_impl(reader, severity="warning")
        notes = list_impl(reader, severity="info")
        with pytest.raises(ValueError, match="error, warning, info"):
            list_impl(reader, severity="fatal")
    assert [c["severity"] for c in warnings["findings"]] == ["warning", "warning"]
    assert warnings["findings"] == [c for c in full["findings"] if c["severity"] == "warning"]
    assert warnings["total"] == 4 and warnings["counts"] == full["counts"] and warnings["severity"] == "warning"
    assert notes["findings"] == [] and notes["total"] == 4


def test_checks_that_found_nothing_and_findings_without_steps(tour_root):
    with RunReader(tour_root / "digits" / "cnn") as reader:
        healthy = list_impl(reader)
        checks = reader.meta()[TAGS.DOCTOR_CHECKS]
    assert healthy["diagnosed"] and healthy["total"] == 0 and healthy["findings"] == []
    assert healthy["checks"] == checks and len(checks) == 15 and healthy["raised"] == {}
    with RunReader(tour_root / "toy2d" / "seed-0") as reader:
        toy = list_impl(reader)
        (record,) = reader.findings()
    (card,) = toy["findings"]
    assert card["check"] == record.check == "class_imbalance" and card["severity"] == "info"
    assert card["steps"] == "" and card["step_start"] is None
    assert card["evidence"]["class_shares"] == record.evidence["values"]["class_shares"]


def test_figure_is_the_report_figure_of_that_finding(tour_root):
    with RunReader(tour_root / "digits" / "sigmoid-mlp") as reader:
        cards = list_impl(reader)["findings"]
        last = figure_impl(reader, index=3)
        records = {record.check: record for record in reader.findings()}
        for bad in (4, -1):
            with pytest.raises(IndexError, match="numbered 0–3"):
                figure_impl(reader, index=bad)
    assert last["check"] == cards[3]["check"] and last["title"] == cards[3]["title"]
    png = base64.b64decode(last["figure"].removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finding = Finding.from_record(records[cards[3]["check"]])
    assert last["figure"] == png_uri(lambda path: finding_figure(finding, path))


def test_handmade_run(handmade):
    with RunReader(handmade) as reader:
        answer = list_impl(reader)
        assert PANEL.available(reader)
        figures = [figure_impl(reader, index=i) for i in range(3)]
    assert not answer["diagnosed"] and answer["checks"] == []
    assert [c["severity"] for c in answer["findings"]] == ["warning", "info", "critical"]  # unknown last
    assert answer["counts"] == {"error": 0, "warning": 1, "info": 1, "critical": 1}
    plotless = answer["findings"][1]
    assert plotless["evidence"] == {"ratio": None, "n": 3} and not plotless["has_plot"]
    assert figures[0]["figure"].startswith("data:image/png;base64,") and figures[1]["figure"] is None
    _strict(json.dumps(answer))


def test_availability(tour_root, tmp_path):
    for run, shown in [("digits/cnn", True), ("digits/sigmoid-mlp", True), ("toy2d/seed-1", True),
                       ("attention/minilm", False), ("shapes/attribution", False)]:  # fmt: skip
        with RunReader(tour_root / run) as reader:
            assert PANEL.available(reader) is shown, run
    with RunWriter(tmp_path / "empty") as writer:
        writer.add_scalar("train/loss", 0, 1.0)
    with RunReader(tmp_path / "empty") as reader:
        assert not PANEL.available(reader)
        assert list_impl(reader) == {
            "diagnosed": False, "checks": [], "counts": {"error": 0, "warning": 0, "info": 0}, "raised": {},
            "total": 0, "severity": "", "severities": ["error", "warning", "info"], "findings": [],
        }  # fmt: skip
        with pytest.raises(IndexError, match="no finding"):
            figure_impl(reader, index=0)


def test_routes(client, tour_root):
    listed = client.get("/api/findings/list", params={"run": "digits/sigmoid-mlp"})
    assert listed.status_code == 200
    body = _strict(listed.text)
    assert body["run"] == "digits/sigmoid-mlp" and body["total"] == 4
    with RunReader(tour_root / "digits" / "sigmoid-mlp") as reader:
        assert {k: v for k, v in body.items() if k != "run"} == list_impl(reader)
    errors = client.get("/api/findings/list", params={"run": "digits/sigmoid-mlp", "severity": "error"}).json()
    assert [c["severity"] for c in errors["findings"]] == ["error", "error"]
    bad = client.get("/api/findings/list", params={"run": "digits/sigmoid-mlp", "severity": "fatal"})
    assert bad.status_code == 400 and "warning" in bad.json()["detail"]
    figure = client.get("/api/findings/figure", params={"run": "digits/sigmoid-mlp", "index": 0}).json()
    assert figure["figure"].startswith("data:image/png;base64,") and figure["check"] == body["findings"][0]["check"]
    missing = client.get("/api/findings/figure", params={"run": "digits/sigmoid-mlp", "index": 9})
    assert missing.status_code == 404 and "0–3" in missing.json()["detail"]
    assert client.get("/api/findings/figure", params={"run": "digits/cnn", "index": 0}).status_code == 404
    assert client.get("/api/findings/figure", params={"run": "digits/cnn", "index": "x"}).status_code == 422
    assert client.get("/api/findings/figure", params={"run": "digits/cnn"}).status_code == 422
    assert client.get("/api/findings/list", params={"run": "no/such"}).status_code == 404
    healthy = client.get("/api/findings/list", params={"run": "digits/cnn"}).json()
    assert healthy["total"] == 0 and len(healthy["checks"]) == 15
    tabs = lambda run: [p["name"] for p in client.get("/api/panels", params={"run": run}).json()["panels"]]  # noqa: E731
    assert "findings" in tabs("digits/cnn") and "findings" not in tabs("attention/minilm")
    assert math.isfinite(body["findings"][0]["evidence"]["median_ratio_last_half"])
