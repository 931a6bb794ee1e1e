import re

import imageio.v3 as iio
import numpy as np
import pytest

from deepscope.demos import run_demo
from deepscope.store import RunReader

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:|//)|url\(\s*["']?(https?:|//)|@import""", re.I)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    return run_demo("toy2d", tmp_path_factory.mktemp("demo"), quick=True)


def test_quick_demo_writes_runs_figures_and_report(quick_demo):
    out = quick_demo.out_dir
    assert [p.name for p in quick_demo.runs] == ["seed-0", "seed-1"]
    figures = out / "figures"
    for name in (
        "task.png",
        "accuracy.png",
        "loss.png",
        "repr_bottleneck_correctness.gif",
        "repr_bottleneck_correctness.mp4",
        "repr_bottleneck_class.gif",
        "repr_bottleneck_class.mp4",
        "decision.gif",
        "decision.mp4",
        "decision_snapshots.png",
        "health_seed_0.png",
        "gradient_flow.png",
    ):
        assert (figures / name).stat().st_size > 0, name
    # 2 epochs of 100 steps, a snapshot every 20 steps: frames at 0, 20, ..., 200
    frames = iio.imread(figures / "repr_bottleneck_correctness.gif", index=None)
    assert frames.shape[0] == 11
    with RunReader(quick_demo.runs[0]) as reader:
        assert reader.tensor_steps("repr/bottleneck").tolist() == list(range(0, 201, 20))
        assert reader.meta()["probe/majority_baseline"] == pytest.approx(0.843)
        assert reader.tensor_steps("health/values").tolist() == list(range(20, 201, 20))  # the measured steps
    assert "Layer health during training" in quick_demo.report.read_text()


def test_report_is_self_contained(quick_demo):
    page = quick_demo.report.read_text(encoding="utf-8")
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert page.count('src="data:image/') >= 7
    for anchor in ("task", "accuracy", "loss", "repr-bottleneck", "decision", "provenance"):
        assert f'id="{anchor}"' in page
    assert "84.3%" in page  # the majority baseline is stated


@pytest.mark.slow
def test_full_demo_matches_the_issue(tmp_path):
    result = run_demo("toy2d", tmp_path)
    assert len(result.runs) == 3
    frames = iio.imread(tmp_path / "toy2d" / "figures" / "repr_bottleneck_class.gif", index=None)
    assert frames.shape[0] == 101


def test_demo_settings_and_rerun_replace_earlier_output(tmp_path):
    first = run_demo(
        "toy2d", tmp_path, quick=True, overrides={"seeds": "5", "epochs": "1", "optimizer": "sgd", "lr": "0.1"}
    )
    assert [p.name for p in first.runs] == ["seed-5"]
    with RunReader(first.runs[0]) as reader:
        assert reader.info.config["optimizer"] == "sgd" and reader.info.config["lr"] == 0.1
    second = run_demo("toy2d", tmp_path, quick=True, overrides={"seeds": "6", "epochs": "1"})
    page = second.report.read_text()
    assert "seed 6" in page and "seed 5" not in page  # the earlier demo's run is gone from the report
    with RunReader(second.runs[0]) as reader:
        assert reader.scalars("train/loss").steps.tolist() == list(range(1, 101))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimiser": "sgd"}, "Did you mean: optimizer"),
        ({"lr": "fast"}, "not a valid float"),
        ({"seeds": "a"}, "ints"),
    ],
)
def test_bad_demo_settings_are_explained(tmp_path, overrides, message):
    with pytest.raises((KeyError, ValueError), match=message):
        run_demo("toy2d", tmp_path, quick=True, overrides=overrides)


def test_settings_need_a_named_demo(tmp_path):
    with pytest.raises(ValueError, match="name it"):
        run_demo("tour", tmp_path, quick=True, overrides={"lr": "0.1"})


def test_shapes_demo_explains_every_method_with_scores(tmp_path):
    from deepscope.attribution import ATTRIBUTIONS
    from deepscope.datasets import shapes

    result = run_demo("shapes", tmp_path, quick=True, overrides={"sanity": "true"})
    assert [run.name for run in result.runs] == ["attribution", "sanity", "layers-shapes", "layers-photos"]
    with RunReader(tmp_path / "shapes" / "attribution") as reader:
        meta = reader.meta()
        assert meta["attribution/methods"] == ATTRIBUTIONS.names()
        held_out = shapes(3, seed=10_000)
        assert meta["attribution/captions"] == [held_out.class_names[int(k)] for k in held_out.labels]
        rows = {row["method"]: row for row in meta["attribution/table"]}
        assert all(0 <= rows[m]["deletion_auc"] <= 1 and 0 <= rows[m]["insertion_auc"] <= 1 for m in rows)
        assert rows["gradcam"]["pointing_game"] == 1.0  # a trained CNN's Grad-CAM peaks on the shape
    with RunReader(tmp_path / "shapes" / "sanity") as reader:
        assert reader.meta()["attribution/gradcam/sanity"]["passed"] is True
    figures = {p.name for p in (tmp_path / "shapes" / "figures").iterdir()}
    assert {"attribution_shapes_CNN__every_method.png", "sanity_shapes_CNN__sanity_checks.png"} <= figures
    page = result.report.read_text()
    assert "Why did the model predict this? (shapes CNN: every method)" in page and "Sanity check" in page
    assert "What the layers respond to (shapes CNN: layers on shapes)" in page
    assert "What the layers respond to (shapes CNN: layers on photos)" in page
    with RunReader(tmp_path / "shapes" / "layers-shapes") as reader:
        meta = reader.meta()
        assert meta["layers/top"] == ["features.relu2", "features.relu3"] and meta["layers/occlusion"] == 2
        assert meta["layers/invariance"] == ["translation", "scale", "rotation"]
    assert {"occlusion_shapes_CNN__layers_on_shapes_0.png", "invariance_shapes_CNN__layers_on_shapes_rotation.png",
            "top_shapes_CNN__layers_on_photos_features_relu3.png"} <= figures  # fmt: skip


def test_digits_demo_shows_vanishing_gradients_next_to_a_healthy_cnn(tmp_path):
    result = run_demo("digits", tmp_path, quick=True)
    assert [run.name for run in result.runs] == ["cnn", "sigmoid-mlp"]

    def last(run, statistic, layer):
        with RunReader(run) as reader:
            meta = reader.meta()
            step = int(reader.tensor_steps("health/values")[-1])
            table = reader.tensor("health/values", step)
            return float(table[meta["health/statistics"].index(statistic), meta["health/layers"].index(layer)])

    cnn, mlp = result.runs
    assert last(mlp, "grad_norm", "fc1") < 1e-3 * last(mlp, "grad_norm", "head")  # vanished on the way down
    assert last(cnn, "grad_norm", "conv1") > 1e-2 * last(cnn, "grad_norm", "head")
    with RunReader(cnn) as a, RunReader(mlp) as b:
        assert a.scalars("probe/accuracy").values[-1] > b.scalars("probe/accuracy").values[-1] + 0.3
    figures = {p.name for p in (tmp_path / "digits" / "figures").iterdir()}
    assert {"gradient_flow.png", "health_healthy_CNN.png", "health_deep_sigmoid_MLP.png"} <= figures
    assert "repr_embed_correctness.gif" in figures  # both runs animate their 64-unit `embed` layer
    with RunReader(cnn) as reader:
        assert reader.scalars("eval/loss").steps.tolist() == [30, 60]  # held-out loss after each epoch
        assert reader.scalars("train/lr").values[0] == pytest.approx(0.05)
        assert reader.meta()["health/residual_blocks"] == ["res1", "res2"]
        ratios = reader.tensors("health/residual")[1]
        assert all(np.isfinite(r).all() and (r > 0).all() for r in ratios)
    assert "Validation curves (Recorder.eval_step)" in result.report.read_text()
    from deepscope.diagnostics import stored_findings

    serious = {run.name: {f.check for f in stored_findings(run) if f.severity != "info"} for run in result.runs}
    assert serious["cnn"] == set()
    assert {"vanishing_gradients", "underfitting"} <= serious["sigmoid-mlp"]
    html = result.report.read_text()
    assert "Diagnosis" in html and "vanishing gradients: ‖∇fc1‖ / ‖∇head‖" in html
