import pytest
import torch

from deepscope.attribution import compare
from deepscope.report import build_report
from deepscope.store import RunReader


def test_compare_records_and_reports(tiny_cnn, generator, tmp_path):
    images = torch.rand(3, 3, 16, 16, generator=generator)
    result = compare(tiny_cnn, images, methods=["saliency"], metrics=())
    rows = result.table()
    assert [row["method"] for row in rows] == ["saliency"] and rows[0]["seconds"] > 0
    assert result.figure(tmp_path / "grid.png").stat().st_size > 0
    assert "<table>" in result._repr_html_()
    run = result.record(tmp_path / "runs" / "attribution")
    with RunReader(run) as reader:
        maps = reader.tensor("attribution/saliency/maps", 0)
        assert maps.shape == (3, 16, 16) and maps.max() == pytest.approx(1.0, abs=1e-3)
        assert reader.meta()["attribution/methods"] == ["saliency"]
    page = build_report(tmp_path / "runs").read_text()
    assert 'id="attribution-attribution"' in page and "deletion AUC (lower is better)" in page


def test_compare_validates_metrics(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match="unknown metric"):
        compare(tiny_cnn, tiny_images, methods=["saliency"], metrics=["accuracy"])
    with pytest.raises(ValueError, match="need masks"):
        compare(tiny_cnn, tiny_images, methods=["saliency"], metrics=["pointing_game"])
