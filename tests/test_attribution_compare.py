import pytest
import torch

from deepscope.attribution import compare
from deepscope.attribution.metrics import deletion_curve, energy_in_mask, insertion_curve, pointing_game
from deepscope.report import build_report
from deepscope.store import RunReader


def test_compare_records_and_reports(tiny_cnn, generator, tmp_path):
    images = torch.rand(3, 3, 16, 16, generator=generator)
    result = compare(tiny_cnn, images, methods=["saliency"], metrics=("deletion",), steps=4)
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
    threads = torch.get_num_threads()  # the explanation's own cost: its seconds × 4 W per busy thread
    assert "energy (Wh, estimated)" in page and f"its seconds × {4.0 * threads:g} W" in page
    from deepscope._format import cell

    assert f"<td>{cell(1000 * rows[0]['seconds'] * 4.0 * threads / 3.6e6)}</td>" in page


def test_compare_validates_metrics(tiny_cnn, tiny_images):
    with pytest.raises(ValueError, match="unknown metric"):
        compare(tiny_cnn, tiny_images, methods=["saliency"], metrics=["accuracy"])
    with pytest.raises(ValueError, match="need masks"):
        compare(tiny_cnn, tiny_images, methods=["saliency"], metrics=["pointing_game"])


def test_compare_scores_equal_the_standalone_metrics(tiny_cnn, generator):
    images = torch.rand(3, 3, 16, 16, generator=generator)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    result = compare(
        tiny_cnn,
        images,
        ["saliency", "gradcam"],
        ["deletion", "insertion", "pointing_game", "energy_in_mask"],
        masks=masks,
    )
    for method in ("saliency", "gradcam"):
        maps = result.results[method].spatial()
        scores = result.scores[method]
        torch.testing.assert_close(scores.deletion_auc, deletion_curve(tiny_cnn, images, maps).auc)
        torch.testing.assert_close(scores.insertion_auc, insertion_curve(tiny_cnn, images, maps).auc)
        torch.testing.assert_close(scores.pointing_game, pointing_game(maps, masks))
        torch.testing.assert_close(scores.energy_in_mask, energy_in_mask(maps, masks), equal_nan=True)


def test_compare_sanity_with_stochastic_methods_is_seeded(tiny_cnn, generator):
    images = torch.rand(2, 3, 16, 16, generator=generator)
    params = {"smoothgrad": {"n_samples": 3}, "rise": {"n_masks": 16}}

    def run():
        return compare(
            tiny_cnn,
            images,
            ["smoothgrad", "rise"],
            ["sanity"],
            params=params,
            generator=torch.Generator().manual_seed(3),
        )

    first, second = run(), run()
    for method in ("smoothgrad", "rise"):
        check = first.scores[method].sanity
        assert check.method == method and check.similarity["spearman"].shape[1] == 2
        torch.testing.assert_close(check.similarity["spearman"], second.scores[method].sanity.similarity["spearman"])
        torch.testing.assert_close(first.results[method].maps, second.results[method].maps)
