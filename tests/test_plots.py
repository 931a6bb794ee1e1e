"""deepscope.plots: real files written, decoded and measured; no torch import; deterministic output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from deepscope import plots
from deepscope.plots import ScatterSequence

F, N = 20, 300  # frames, points
EXTENT = (-5.0, 5.0, -5.0, 5.0)


def _task(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, size=(n, 2))  # the seed article's task
    y = ((np.hypot(x[:, 0], x[:, 1]) < 2) | (np.hypot(x[:, 0] - 3, x[:, 1] - 3) < 1)).astype(int)
    return x, y


def _sequence(label: str, seed: int, frames: int = F, n: int = N) -> ScatterSequence:
    rng = np.random.default_rng(seed)
    x, y = _task(n)
    drift = np.linspace(0, 1, frames)[:, None, None]
    points = (1 - drift) * rng.normal(size=(1, n, 2)) + drift * np.stack([y * 3.0, x[:, 0]], axis=1)[None]
    points = points + 0.05 * rng.normal(size=(frames, n, 2))  # (F, N, 2)
    correct = rng.random((frames, n)) < np.linspace(0.4, 0.95, frames)[:, None]
    return ScatterSequence(label, np.arange(frames) * 10, points, correct, y, correct.mean(axis=1))


def _grid_runs(n_runs: int = 2, frames: int = F, g: int = 40) -> list[tuple[str, np.ndarray, np.ndarray]]:
    gx, gy = np.meshgrid(np.linspace(-5, 5, g), np.linspace(-5, 5, g))  # row index = y
    margin = np.maximum(2 - np.hypot(gx, gy), 1 - np.hypot(gx - 3, gy - 3))
    sharp = np.linspace(0.2, 4, frames)[:, None, None]
    probs = 1 / (1 + np.exp(-sharp * (margin[None] - 0.5 + np.linspace(-1, 0.5, frames)[:, None, None])))
    return [(f"seed {r}", np.arange(frames) * 10, probs ** (1 + 0.2 * r)) for r in range(n_runs)]


def _gif_frames(path: Path) -> np.ndarray:
    return iio.imread(path, index=None)  # (F, H, W, C)


def _mp4_frames_and_size(path: Path) -> tuple[int, tuple[int, int]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return n_frames, tuple(meta["size"])


@pytest.fixture(scope="module")
def runs() -> list[ScatterSequence]:
    return [_sequence(f"seed {s}", s) for s in range(3)]


# --------------------------------------------------------------------------- zscore


def test_zscore_has_zero_mean_and_unit_std_per_frame_and_axis() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(loc=[3.0, -7.0], scale=[0.1, 20.0], size=(5, 200, 2))
    z = plots.zscore(points)
    np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=1), 1.0, rtol=1e-12)


def test_zscore_constant_column_becomes_zero_not_nan() -> None:
    points = np.stack([np.linspace(0, 1, 10), np.full(10, 0.1)], axis=1)  # a dead unit stuck at 0.1
    z = plots.zscore(points)
    assert np.all(np.isfinite(z))
    np.testing.assert_array_equal(z[:, 1], 0.0)
    np.testing.assert_allclose(z[:, 0].std(), 1.0)
    np.testing.assert_array_equal(plots.zscore(np.zeros((3, 4, 2))), 0.0)


def test_zscore_leaves_non_finite_entries_out_of_the_statistics() -> None:
    points = np.array([[0.0, 1.0], [2.0, 3.0], [np.nan, 5.0], [4.0, np.inf]])
    z = plots.zscore(points)
    assert np.isnan(z[2, 0]) and np.isnan(z[3, 1])
    np.testing.assert_allclose(z[[0, 1, 3], 0], plots.zscore(np.array([0.0, 2.0, 4.0])[:, None])[:, 0])


def test_zscore_rejects_1d() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., N, D\)"):
        plots.zscore(np.arange(5.0))


# --------------------------------------------------------------------------- representation animation


@pytest.mark.parametrize("color_by", ["correctness", "class"])
def test_representation_animation_writes_decodable_gif_mp4_and_png(tmp_path, runs, color_by) -> None:
    paths = plots.representation_animation(
        runs, tmp_path / "sub" / "repr", color_by=color_by, class_names=("yellow", "blue"), layer="fc2"
    )
    assert [p.name for p in paths] == ["repr.gif", "repr.mp4", "repr_last.png"]
    frames = _gif_frames(paths[0])
    assert frames.shape[0] == F
    height, width = frames.shape[1:3]
    assert width % 16 == 0 and height % 16 == 0
    n_mp4, size = _mp4_frames_and_size(paths[1])
    assert n_mp4 == F and size == (width, height)
    with Image.open(paths[2]) as png:
        assert png.size == (width, height)
    assert paths[0].stat().st_size < 1_500_000 and paths[2].stat().st_size < 150_000
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


def test_last_png_shows_the_last_frame(tmp_path, runs) -> None:
    gif, png = plots.representation_animation(runs[:1], tmp_path / "r", color_by="correctness", formats=["gif"])
    last_gif = _gif_frames(gif)[-1][..., :3].astype(int)
    last_png = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert np.abs(last_gif - last_png).mean() < 3  # both are palette images of the same frame


@pytest.mark.parametrize("n_runs", [1, 4])
def test_representation_animation_any_number_of_runs_and_points(tmp_path, n_runs) -> None:
    seqs = [_sequence(f"run {i}", i, frames=4, n=17 + i) for i in range(n_runs)]
    gif, png = plots.representation_animation(seqs, tmp_path / "r", color_by="class", formats=("gif",))
    frames = _gif_frames(gif)
    assert frames.shape[0] == 4 and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    assert png.exists()


def test_representation_animation_is_deterministic(tmp_path) -> None:
    seqs = [_sequence("a", 0, frames=5, n=60)]
    first = plots.representation_animation(seqs, tmp_path / "one", color_by="correctness")
    second = plots.representation_animation(seqs, tmp_path / "two", color_by="correctness")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_fixed_axis_limits_keep_every_point_in_view(tmp_path) -> None:
    seq = _sequence("a", 0, frames=3, n=50)
    pts = seq.points.copy()
    pts[2, 0] = [1e3, -1e3]  # one far outlier in the last frame only
    seq = ScatterSequence("a", seq.steps, pts, seq.correct, seq.labels, seq.accuracy)
    paths = plots.representation_animation([seq], tmp_path / "r", color_by="correctness", formats=["gif"])
    assert _gif_frames(paths[0]).shape[0] == 3


def test_non_finite_points_warn_and_are_skipped(tmp_path) -> None:
    seq = _sequence("a", 0, frames=3, n=50)
    pts = seq.points.copy()
    pts[1, :5] = np.nan
    seq = ScatterSequence("a", seq.steps, pts, seq.correct, seq.labels, seq.accuracy)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        plots.representation_animation([seq], tmp_path / "r", color_by="class", formats=["mp4"])


def test_scatter_sequence_validates_shapes() -> None:
    good = _sequence("a", 0, frames=3, n=10)
    with pytest.raises(ValueError, match="points has 10 rows but labels has 9"):
        ScatterSequence("a", good.steps, good.points, good.correct, good.labels[:9], good.accuracy)
    with pytest.raises(ValueError, match="correct has shape"):
        ScatterSequence("a", good.steps, good.points, good.correct[:, :9], good.labels, good.accuracy)
    with pytest.raises(ValueError, match="steps has shape"):
        ScatterSequence("a", good.steps[:2], good.points, good.correct, good.labels, good.accuracy)
    with pytest.raises(ValueError, match=r"\(F, N, 2\)"):
        ScatterSequence("a", good.steps, good.points[..., :1], good.correct, good.labels, good.accuracy)
    with pytest.raises(ValueError, match="not percentages"):
        ScatterSequence("a", good.steps, good.points, good.correct, good.labels, good.accuracy * 100)


def test_representation_animation_validates_arguments(tmp_path, runs) -> None:
    with pytest.raises(ValueError, match="color_by"):
        plots.representation_animation(runs, tmp_path / "r", color_by="colour")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown animation format"):
        plots.representation_animation(runs, tmp_path / "r", color_by="class", formats=("avi",))
    with pytest.raises(ValueError, match="same number of frames"):
        plots.representation_animation([runs[0], _sequence("b", 1, frames=3)], tmp_path / "r", color_by="class")
    with pytest.raises(ValueError, match="1 to 4"):
        plots.representation_animation(runs + runs, tmp_path / "r", color_by="class")
    with pytest.raises(ValueError, match="class_names"):
        plots.representation_animation(runs, tmp_path / "r", color_by="class", class_names=("only one",))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- decision maps


def test_decision_animation_and_snapshots(tmp_path) -> None:
    x, y = _task()
    grid = _grid_runs(n_runs=3)
    gif, mp4, png = plots.decision_animation(grid, EXTENT, x, y, tmp_path / "dec", class_names=("yellow", "blue"))
    frames = _gif_frames(gif)
    assert frames.shape[0] == F and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    assert _mp4_frames_and_size(mp4) == (F, (frames.shape[2], frames.shape[1]))
    assert png.stat().st_size < 150_000
    snap = plots.decision_snapshots(grid, EXTENT, x, y, tmp_path / "snap.png", n_columns=5)
    with Image.open(snap) as im:
        assert im.size[0] > im.size[1] > 300
    assert snap.stat().st_size < 150_000


def test_decision_snapshots_with_fewer_frames_than_columns(tmp_path) -> None:
    x, y = _task(50)
    out = plots.decision_snapshots(_grid_runs(1, frames=2), EXTENT, x, y, tmp_path / "s.png", n_columns=5)
    assert out.exists()


def test_decision_maps_validate_inputs(tmp_path) -> None:
    x, y = _task()
    grid = _grid_runs(1, frames=3)
    with pytest.raises(ValueError, match="points has 300 rows but labels has 299"):
        plots.decision_animation(grid, EXTENT, x, y[:-1], tmp_path / "d")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.decision_animation([("a", grid[0][1], grid[0][2] * 2)], EXTENT, x, y, tmp_path / "d")
    with pytest.raises(ValueError, match="extent"):
        plots.decision_snapshots(grid, (5, -5, -5, 5), x, y, tmp_path / "d.png")
    with pytest.raises(ValueError, match="steps has shape"):
        plots.decision_animation([("a", grid[0][1][:2], grid[0][2])], EXTENT, x, y, tmp_path / "d")
    with pytest.raises(ValueError, match=r"\(F, G, G\)"):
        plots.decision_animation([("a", grid[0][1], grid[0][2][0])], EXTENT, x, y, tmp_path / "d")


# --------------------------------------------------------------------------- static figures


def test_training_curves_with_baseline(tmp_path, runs) -> None:
    curves = [(r.label, r.steps, {"accuracy": r.accuracy, "balanced accuracy": r.accuracy * 0.9}) for r in runs]
    out = plots.training_curves(curves, tmp_path / "acc.png", baseline=0.843, xlabel="training step (batches of 10)")
    with Image.open(out) as im:
        assert im.size == (864, 432)
    assert out.stat().st_size < 150_000
    with pytest.raises(ValueError, match="metric 'accuracy' has shape"):
        plots.training_curves([("a", np.arange(5), {"accuracy": np.ones(4)})], tmp_path / "x.png")


def test_loss_curves(tmp_path) -> None:
    steps = np.arange(50)
    loss = 0.7 * np.exp(-steps / 20) + 0.05
    out = plots.loss_curves(
        [("a", steps, loss), ("b", steps, loss * 1.1)],
        tmp_path / "loss.png",
        log_y=True,
        window=5,
        reference=(np.log(2), "ln 2"),
    )
    assert out.exists() and out.stat().st_size < 150_000
    with pytest.raises(ValueError, match="positive"):
        plots.loss_curves([("a", steps, loss - 0.5)], tmp_path / "bad.png", log_y=True)
    with pytest.raises(ValueError, match="loss has shape"):
        plots.loss_curves([("a", steps, loss[:10])], tmp_path / "bad.png")


def test_toy_task_figure(tmp_path) -> None:
    x, y = _task(1000)
    out = plots.toy_task_figure(x, y, tmp_path / "task.png", circles=[(0, 0, 2), (3, 3, 1)])
    with Image.open(out) as im:
        assert im.size == (768, 576)
    assert out.stat().st_size < 150_000
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plots.toy_task_figure(x[:, :1], y, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-negative integers"):
        plots.toy_task_figure(x, y - 1, tmp_path / "bad.png")


# --------------------------------------------------------------------------- environment


def test_rendering_never_imports_torch_or_pyplot(tmp_path) -> None:
    code = f"""
import sys
import numpy as np
from pathlib import Path
import deepscope.plots as plots
x = np.random.default_rng(0).uniform(-5, 5, (40, 2))
plots.toy_task_figure(x, (x[:, 0] > 0).astype(int), Path({str(tmp_path)!r}) / "t.png")
assert "torch" not in sys.modules, "torch was imported"
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
"""
    src = str(Path(plots.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_full_size_animation_is_fast(tmp_path) -> None:
    seqs = [_sequence(f"seed {s}", s, frames=100, n=1000) for s in range(3)]
    start = time.perf_counter()
    paths = plots.representation_animation(seqs, tmp_path / "big", color_by="correctness")
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"100 frames x 3 panels x 1000 points took {elapsed:.1f} s (target < 10 s)"
    assert paths[0].stat().st_size < 4_500_000


def test_class_encodings_stay_distinct_up_to_64_classes():
    from deepscope._plot_style import MAX_CLASSES, class_color, class_marker

    pairs = {(class_color(k), class_marker(k)) for k in range(MAX_CLASSES)}
    assert MAX_CLASSES == 64 and len(pairs) == 64
    assert len({class_color(k) for k in range(8)}) == 8 and len({class_marker(k) for k in range(8)}) == 8


def test_health_heatmaps_mark_infinite_values_and_gradient_flow(tmp_path):
    steps = np.array([10, 20, 30])
    values = np.array([[1e-3, 1e-2, np.inf], [1e-4, 0.0, 1e-4]])
    panels = [
        plots.HealthPanel("gradient norm", ["conv1", "fc"], values, log=True),
        plots.HealthPanel("dead channels (share)", ["relu"], np.array([[0.0, 0.5, np.nan]]), limits=(0.0, 1.0)),
    ]
    png = plots.health_heatmaps(steps, panels, tmp_path / "health.png", title="health")
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() > 10  # the infinite value is marked with a red cross
    with pytest.raises(ValueError, match="values"):
        plots.health_heatmaps(steps, [plots.HealthPanel("x", ["a"], np.zeros((1, 2)))], tmp_path / "bad.png", title="")
    flow = plots.gradient_flow([("run", ["conv1", "fc"], steps, np.abs(values[:, :3]) + 1e-6)], tmp_path / "flow.png")
    assert Image.open(flow).size[0] > 400


def test_health_heatmap_log_scale_is_not_stretched_by_a_zero(tmp_path, monkeypatch):
    """A zero gradient sits at the bottom of the colour scale: the smallest measured value, not log10(1e-308)."""
    from matplotlib.axes import Axes

    limits = []
    imshow = Axes.imshow
    monkeypatch.setattr(
        Axes, "imshow", lambda ax, *a, **k: limits.append((k["vmin"], k["vmax"])) or imshow(ax, *a, **k)
    )
    values = np.array([[1e-3, 0.0, 1e-1]])
    plots.health_heatmaps(
        np.arange(3), [plots.HealthPanel("g", ["fc"], values, log=True)], tmp_path / "h.png", title=""
    )
    assert limits == [(pytest.approx(-3.0), pytest.approx(-1.0))]
