import subprocess
import sys

import numpy as np

from deepscope.report import build_report
from deepscope.store import RunWriter


def _fake_run(run_dir, name, classes, n_snapshots=3):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    with RunWriter(run_dir, name=name, config={"batch_size": 10, "note": name}) as writer:
        writer.set_meta("probe/class_names", classes)
        writer.set_meta("probe/majority_baseline", 0.6)
        writer.set_meta("repr/layers", ["fc<1>"])
        writer.add_tensor("probe/labels", 0, labels)
        for step in range(0, 10 * n_snapshots, 10):
            writer.add_scalars(
                step, {"train/loss": 1.0 / (step + 1), "probe/accuracy": 0.5, "probe/balanced_accuracy": 0.5}
            )
            writer.add_tensor("probe/pred", step, rng.integers(0, 2, 40))
            writer.add_tensor("repr/fc<1>", step, rng.normal(size=(40, 5)).astype(np.float32))


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    _fake_run(tmp_path / "a", evil, [evil, "<b>bold</b>"])
    page = build_report(tmp_path).read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page


def test_wide_representations_are_projected_to_two_dimensions(tmp_path):
    _fake_run(tmp_path / "a", "run a", ["no", "yes"])
    _fake_run(tmp_path / "b", "run b", ["no", "yes"])
    page = build_report(tmp_path, tmp_path / "out" / "r.html").read_text()
    assert "first two principal components (of 5 stored dimensions)" in page
    assert (tmp_path / "out" / "figures" / "repr_fc_1__correctness.gif").exists()
    assert page.count("<tr>") >= 3  # header + one row per run (overview)


def test_umap_projection_on_request_and_unknown_projections_are_refused(tmp_path):
    import imageio.v3 as iio
    import pytest

    _fake_run(tmp_path / "a", "run a", ["no", "yes"])
    page = build_report(tmp_path, projection="umap").read_text()
    assert "a UMAP embedding of its 5 stored dimensions" in page
    assert iio.imread(tmp_path / "figures" / "repr_fc_1__class.gif", index=None).shape[0] == 3
    with pytest.raises(ValueError, match="valid: pca, umap"):
        build_report(tmp_path, projection="tsne")


def test_report_does_not_import_torch():
    code = "import sys, deepscope.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runs_of_different_lengths_and_more_runs_than_panels(tmp_path):
    import imageio.v3 as iio

    for i in range(5):
        _fake_run(tmp_path / f"r{i}", f"run {i}", ["no", "yes"], n_snapshots=2 + i)
    page = build_report(tmp_path).read_text()
    assert "Showing the first 4 of 5 runs." in page
    frames = iio.imread(tmp_path / "figures" / "repr_fc_1__class.gif", index=None)
    assert frames.shape[0] == 5  # the longest shown run (run 3) has 5 snapshots; shorter runs hold their last
    assert page.count("<tr>") == 3 * (1 + 5)  # overview, reproducibility and provenance: a header and every run


def test_table_cells_keep_tiny_values_readable():
    from deepscope._format import cell

    assert cell(0.1234) == "0.123" and cell(7.8e-07) == "7.80e-07" and cell(-2e-4) == "-2.00e-04"
    assert cell(0.0) == "0.000" and cell(float("nan")) == "n/a" and cell(None) == "—" and cell(3) == "3"
