"""Matplotlib figures and animations of training dynamics, from plain numpy arrays.

Layer 4 (rendering): numpy in, image files out. No torch import, no pyplot global state (every figure
is a ``matplotlib.figure.Figure`` on its own Agg canvas, so a notebook's backend is left alone), and
deterministic output.

Encoding (DESIGN §6): colour-blind-safe Okabe–Ito colours, and correct/wrong is never colour alone:
correct = blue filled circle, misclassified = larger vermillion cross drawn on top. True classes get
both a colour and a marker shape. Probability maps use a lightened, binned ``PuOr`` (diverging,
centred on 0.5) with a colour bar and the 0.5 decision contour.

Animations draw the figure once and then only redraw the artists that change (blitting on the Agg
buffer); frames stream to ffmpeg (H.264, yuv420p) and to a GIF with one fixed palette.

This module holds the representation animation and the static figures; the pieces live in private
modules and are re-exported here: ``_plot_style`` (colours, markers, label checks), ``_media``
(canvas to PNG/GIF/MP4) and ``_decision_plots`` (:func:`decision_animation`, :func:`decision_snapshots`).

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> rng = np.random.default_rng(0)
    >>> run = ScatterSequence("seed 0", np.arange(5), rng.normal(size=(5, 50, 2)),
    ...                       rng.random((5, 50)) > 0.3, rng.integers(0, 2, 50), np.linspace(0.5, 0.9, 5))
    >>> paths = representation_animation([run], Path("/tmp/ds_doc/repr"), color_by="correctness")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from deepscope._attention_plots import (
    attention_entropy_figure,
    attention_head_view,
    attention_model_view,
    attention_rollout_figure,
)
from deepscope._attribution_plots import MapRow, SanityCurve, attribution_grid, overlay, sanity_curves
from deepscope._decision_plots import decision_animation, decision_snapshots
from deepscope._featurevis_plots import feature_vis_figure
from deepscope._health_plots import HealthPanel, gradient_flow, health_heatmaps
from deepscope._layer_plots import (
    evolution_strip,
    feature_map_grid,
    filter_grid,
    invariance_figure,
    occlusion_figure,
    top_activation_grid,
)
from deepscope._media import (
    _FORMATS,
    _animate,
    _check_fps,
    _figure,
    _formats,
    _frame_size,
    _save_figure,
    _single_axes,
    _wrap,
)
from deepscope._plot_style import (
    CLASS_COLORS,
    CLASS_MARKERS,
    CORRECT_COLOR,
    WRONG_COLOR,
    _class_handles,
    _class_names,
    _decorate,
    _labels,
    _points_and_labels,
    _reference_line,
    _vector,
    class_color,
    class_marker,
)
from deepscope._text_plots import highlighted_html, token_attribution_figure

if TYPE_CHECKING:
    from matplotlib.artist import Artist

__all__ = [
    "CLASS_COLORS",
    "CLASS_MARKERS",
    "CORRECT_COLOR",
    "WRONG_COLOR",
    "HealthPanel",
    "MapRow",
    "SanityCurve",
    "ScatterSequence",
    "attention_entropy_figure",
    "attention_head_view",
    "attention_model_view",
    "attention_rollout_figure",
    "attribution_grid",
    "decision_animation",
    "decision_snapshots",
    "evolution_strip",
    "feature_map_grid",
    "feature_vis_figure",
    "filter_grid",
    "gradient_flow",
    "health_heatmaps",
    "highlighted_html",
    "invariance_figure",
    "loss_curves",
    "occlusion_figure",
    "overlay",
    "representation_animation",
    "sanity_curves",
    "token_attribution_figure",
    "top_activation_grid",
    "toy_task_figure",
    "training_curves",
    "zscore",
]

RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_METRIC_STYLES = ("-", "--", "-.", (0, (1, 1)))


@dataclass(frozen=True, eq=False)
class ScatterSequence:
    """One training run's 2-D representation of a probe set over time.

    Args:
        label: Run name shown in the panel title, e.g. ``"seed 0"``.
        steps: ``(F,)`` training step of each frame.
        points: ``(F, N, 2)`` raw 2-D representation of every point at every frame.
        correct: ``(F, N)`` whether each point is classified correctly at each frame.
        labels: ``(N,)`` true class of each point (non-negative integers).
        accuracy: ``(F,)`` accuracy in ``[0, 1]`` at each frame.
    """

    label: str
    steps: np.ndarray
    points: np.ndarray
    correct: np.ndarray
    labels: np.ndarray
    accuracy: np.ndarray

    def __post_init__(self) -> None:
        where = f"ScatterSequence {self.label!r}"
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 3 or points.shape[2] != 2 or points.shape[0] == 0:
            raise ValueError(f"{where}: points must have shape (F, N, 2) with F >= 1, got {points.shape}")
        n_frames, n_points = points.shape[:2]
        steps = _vector(self.steps, n_frames, "steps", where, "frames in points")
        accuracy = _vector(self.accuracy, n_frames, "accuracy", where, "frames in points").astype(np.float64)
        labels = _labels(self.labels, n_points, where)
        correct = np.asarray(self.correct)
        if correct.shape != (n_frames, n_points):
            raise ValueError(f"{where}: correct has shape {correct.shape} but points implies ({n_frames}, {n_points})")
        if np.any(~np.isfinite(accuracy)) or np.any((accuracy < 0) | (accuracy > 1)):
            raise ValueError(f"{where}: accuracy must be finite fractions in [0, 1] (not percentages)")
        for name, value in (
            ("steps", steps),
            ("points", points),
            ("correct", correct.astype(bool)),
            ("labels", labels),
            ("accuracy", accuracy),
        ):
            object.__setattr__(self, name, value)


def zscore(points: np.ndarray) -> np.ndarray:
    """Standardise each coordinate over the points axis (the last-but-one axis).

    ``z = (x - mean) / std`` per axis, so ``(F, N, 2)`` is standardised per frame and per unit. A
    coordinate with zero spread (a dead unit; std ≤ 1e-10·|mean| counts as zero) becomes 0, never NaN.
    Non-finite entries are left out of the statistics and stay NaN in the result.

    Args:
        points: Array of shape ``(..., N, D)``.

    Returns:
        float64 array of the same shape.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"zscore needs an array of shape (..., N, D), got shape {x.shape}")
    finite = np.isfinite(x)
    count = np.maximum(finite.sum(axis=-2, keepdims=True), 1)
    mean = np.where(finite, x, 0.0).sum(axis=-2, keepdims=True) / count
    dev = np.where(finite, x - mean, 0.0)
    std = np.sqrt((dev**2).sum(axis=-2, keepdims=True) / count)
    spread = (std > 0) & (std > 1e-10 * np.abs(mean))
    z = np.divide(dev, std, out=np.zeros_like(dev), where=spread & finite)
    return np.where(finite, z, np.nan)


def _limits(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else 1.0
    return lo - pad * span, hi + pad * span


# --------------------------------------------------------------------------- representation animation


def representation_animation(
    runs: Sequence[ScatterSequence],
    out_base: Path,
    *,
    color_by: Literal["correctness", "class"],
    class_names: Sequence[str] | None = None,
    layer: str = "",
    axis_names: tuple[str, str] = ("unit 1", "unit 2"),
    fps: int = 10,
    formats: Sequence[str] = _FORMATS,
) -> list[Path]:
    """Animate each run's 2-D representation of every probe point, runs side by side.

    Each frame z-scores every panel's points per axis (:func:`zscore`); axis limits are fixed per panel
    and cover every point of every frame, so nothing leaves the view.

    Args:
        runs: 1 to 4 runs with the same number of frames.
        out_base: Output path without extension; writes ``.gif``, ``.mp4`` and ``_last.png`` next to it.
        color_by: ``"correctness"`` (blue circle = correct, vermillion cross = misclassified) or
            ``"class"`` (true-class colour and marker).
        class_names: Names of the classes (default ``"class 0"``, ``"class 1"``, ...).
        layer: Name of the layer shown, for the title.
        axis_names: What the two coordinates are (``"PC 1"``… for a projection), for the axis labels.
        fps: Frames per second.
        formats: Any of ``"gif"`` and ``"mp4"``.

    Returns:
        The paths written, in ``formats`` order, then the last-frame PNG.
    """
    from matplotlib.lines import Line2D

    runs = list(runs)
    if not 1 <= len(runs) <= 4 or not all(isinstance(r, ScatterSequence) for r in runs):
        raise ValueError(f"runs must be 1 to 4 ScatterSequence objects, got {len(runs)} items")
    if color_by not in ("correctness", "class"):
        raise ValueError(f"color_by must be 'correctness' or 'class', got {color_by!r}")
    fmts = _formats(formats)
    _check_fps(fps)
    n_frames = runs[0].points.shape[0]
    for run in runs:
        if run.points.shape[0] != n_frames:
            raise ValueError(
                f"all runs need the same number of frames: {runs[0].label!r} has {n_frames}, "
                f"{run.label!r} has {run.points.shape[0]}"
            )
    names = _class_names(class_names, np.concatenate([r.labels for r in runs]))
    zs = [zscore(r.points) for r in runs]  # each (F, N, 2)
    if any(np.isnan(z).any() for z in zs):
        warnings.warn("some points have non-finite coordinates; they are not drawn", RuntimeWarning, stacklevel=2)

    width, height = _frame_size(len(runs))
    fig, canvas = _figure(width, height)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    what = f"{f'Layer {layer}: 2-D' if layer else '2-D'} representation of every probe point during training"
    if color_by == "correctness":
        meaning = "blue circle = correct, vermillion cross = misclassified · axes z-scored per frame"
        handles = [
            Line2D([], [], linestyle="none", marker="o", color=CORRECT_COLOR, markersize=5, label="correct"),
            Line2D(
                [],
                [],
                linestyle="none",
                marker="x",
                color=WRONG_COLOR,
                markersize=7,
                markeredgewidth=1.5,
                label="misclassified",
            ),
        ]
        key_colors = [CORRECT_COLOR, WRONG_COLOR]
    else:
        meaning = "colour and marker = true class · axes z-scored per frame"
        handles = _class_handles(names)
        key_colors = list(dict.fromkeys(class_color(k) for k in range(len(names))))
    fig.suptitle(f"{_wrap(what, width)}\n{_wrap(meaning, width)}", fontsize=10.5)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9)

    animated: list[Artist] = []
    updates: list[Callable[[int], None]] = []
    for ax, run, z in zip(axes, runs, zs, strict=True):
        ax.set_xlim(*_limits(z[..., 0]))
        ax.set_ylim(*_limits(z[..., 1]))
        ax.set_xlabel(f"{axis_names[0]} (z-score)")
        ax.set_ylabel(f"{axis_names[1]} (z-score)")
        ax.tick_params(labelsize=8)
        ax.grid(True, color="0.92", linewidth=0.6)
        ax.set_axisbelow(True)
        title = ax.set_title(_panel_title(run, 0), fontsize=9)
        empty = np.empty((0, 2))
        if color_by == "correctness":
            ok = ax.scatter(empty[:, 0], empty[:, 1], s=9, marker="o", color=CORRECT_COLOR, linewidths=0, zorder=2)
            bad = ax.scatter(empty[:, 0], empty[:, 1], s=22, marker="x", color=WRONG_COLOR, linewidths=1.1, zorder=3)
            artists = [ok, bad]
        else:
            artists = [
                ax.scatter(
                    empty[:, 0],
                    empty[:, 1],
                    s=10 if k == 0 else 14,
                    marker=class_marker(k),
                    color=class_color(k),
                    linewidths=0,
                    zorder=2 + k,
                )
                for k in range(len(names))
            ]
        animated += [*artists, title]
        updates.append(_scatter_updater(run, z, artists, title, color_by))

    def update(i: int) -> None:
        for fn in updates:
            fn(i)

    return _animate(fig, canvas, animated, update, n_frames, out_base, fmts, fps, key_colors)


def _panel_title(run: ScatterSequence, i: int) -> str:
    return f"{run.label} — step {int(run.steps[i])} — accuracy {run.accuracy[i]:.1%}"


def _scatter_updater(
    run: ScatterSequence, z: np.ndarray, artists: list[Any], title: Artist, color_by: str
) -> Callable[[int], None]:
    finite = np.isfinite(z).all(axis=-1)  # (F, N)
    if color_by == "correctness":
        masks = [lambda i: run.correct[i], lambda i: ~run.correct[i]]
    else:
        masks = [lambda i, k=k: run.labels == k for k in range(len(artists))]

    def update(i: int) -> None:
        title.set_text(_panel_title(run, i))
        for artist, mask in zip(artists, masks, strict=True):
            artist.set_offsets(z[i][mask(i) & finite[i]])

    return update


# --------------------------------------------------------------------------- static figures


def training_curves(
    runs: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
    out_png: Path,
    *,
    baseline: float | None = None,
    title: str = "Accuracy on the probe set",
    ylabel: str = "accuracy (%)",
    xlabel: str = "training step",
    percent: bool = True,
) -> Path:
    """Metric curves per run (colour = run, line style = metric) against the majority-class baseline.

    Args:
        runs: ``(label, steps (T,), {"accuracy": (T,), "balanced accuracy": (T,), ...})`` per run; values
            are fractions in ``[0, 1]`` when ``percent`` is true.
        out_png: PNG path to write.
        baseline: Majority-class accuracy (fraction), drawn as a labelled dotted line.
        title: Figure title.
        ylabel: y-axis label.
        xlabel: x-axis label, e.g. ``"training step (batches of 10)"``.
        percent: Show fractions as percentages.

    Returns:
        ``out_png``.
    """
    runs = _check_runs(runs, "runs")
    scale = 100.0 if percent else 1.0
    metrics: list[str] = []
    for label, steps, values in runs:
        if not isinstance(values, Mapping) or not values:
            raise ValueError(f"run {label!r}: metrics must be a non-empty mapping name -> values")
        for name, vals in values.items():
            _vector(vals, len(steps), f"metric {name!r}", f"run {label!r}", "steps")
            metrics += [name] if name not in metrics else []
    if len(metrics) > len(_METRIC_STYLES):
        raise ValueError(f"at most {len(_METRIC_STYLES)} metrics can be told apart by line style, got {metrics}")
    from matplotlib.lines import Line2D

    fig, canvas, ax = _single_axes(864, 432)
    handles = []
    for r, (label, steps, values) in enumerate(runs):
        color = RUN_COLORS[r % len(RUN_COLORS)]
        for name, vals in values.items():
            ax.plot(
                steps,
                np.asarray(vals, dtype=np.float64) * scale,
                color=color,
                linestyle=_METRIC_STYLES[metrics.index(name)],
                linewidth=1.4,
            )
        handles.append(Line2D([], [], color=color, linewidth=2, label=label))
    handles += [Line2D([], [], color="0.3", linestyle=_METRIC_STYLES[m], label=name) for m, name in enumerate(metrics)]
    if baseline is not None:
        if not np.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")
        text = (
            f"majority-class baseline {baseline * scale:.1f} %"
            if percent
            else f"majority-class baseline {baseline:.3g}"
        )
        reference_handle = _reference_line(ax, baseline * scale, text)
        ax.annotate(
            text,
            (1, baseline * scale),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
        handles.append(reference_handle)
    if percent:
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 100.0) if hi <= 100.0 else hi)
    _decorate(fig, ax, handles, title, xlabel, ylabel)
    return _save_figure(fig, canvas, Path(out_png))


def loss_curves(
    runs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    out_png: Path,
    *,
    title: str = "Training loss",
    ylabel: str = "loss",
    xlabel: str = "training step",
    log_y: bool = False,
    window: int = 1,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Loss per run, optionally smoothed, with an optional labelled reference level.

    Args:
        runs: ``(label, steps (T,), loss (T,))`` per run.
        out_png: PNG path to write.
        title: Figure title.
        ylabel: y-axis label.
        xlabel: x-axis label.
        log_y: Logarithmic y axis (needs positive losses).
        window: If > 1, draw the raw loss faintly and its centred moving average over ``window`` steps.
        reference: ``(value, text)`` horizontal line, e.g. ``(0.693, "ln 2: chance-level loss")``.

    Returns:
        ``out_png``.
    """
    runs = _check_runs(runs, "runs")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    from matplotlib.lines import Line2D

    fig, canvas, ax = _single_axes(864, 432)
    handles = []
    for r, (label, steps, values) in enumerate(runs):
        vals = _vector(values, len(steps), "loss", f"run {label!r}", "steps").astype(np.float64)
        if log_y and np.any(vals[np.isfinite(vals)] <= 0):
            raise ValueError(f"run {label!r}: log_y needs positive losses")
        color = RUN_COLORS[r % len(RUN_COLORS)]
        if window > 1 and len(vals) >= window:
            ax.plot(steps, vals, color=color, linewidth=0.7, alpha=0.3)
            kernel = np.ones(window) / window
            smooth = np.convolve(vals, kernel, mode="valid")
            ax.plot(steps[window // 2 : window // 2 + len(smooth)], smooth, color=color, linewidth=1.6)
        else:
            ax.plot(steps, vals, color=color, linewidth=1.4)
        handles.append(Line2D([], [], color=color, linewidth=2, label=label))
    if window > 1:
        handles.append(Line2D([], [], color="0.5", linewidth=0.7, alpha=0.5, label="raw"))
        handles.append(Line2D([], [], color="0.3", linewidth=1.6, label=f"moving average ({window} steps)"))
    if reference is not None:
        handles.append(_reference_line(ax, *reference))
    if log_y:
        ax.set_yscale("log")
    _decorate(fig, ax, handles, title, xlabel, ylabel)
    return _save_figure(fig, canvas, Path(out_png))


def toy_task_figure(
    points: np.ndarray,
    labels: np.ndarray,
    out_png: Path,
    *,
    circles: Sequence[tuple[float, float, float]] = (),
    class_names: Sequence[str] | None = None,
    title: str = "The task: predict the class of a point from its position",
) -> Path:
    """The toy task: points in true-class colour and marker, the generating circles as outlines.

    Args:
        points: ``(N, 2)`` inputs.
        labels: ``(N,)`` true classes.
        out_png: PNG path to write.
        circles: ``(cx, cy, r)`` outlines of the regions that define the classes.
        class_names: Names of the classes.
        title: Figure title.

    Returns:
        ``out_png``.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    pts, labs, names = _points_and_labels(points, labels, class_names)
    fig, canvas, ax = _single_axes(768, 576)
    for k in range(len(names)):
        sel = labs == k
        ax.scatter(
            pts[sel, 0],
            pts[sel, 1],
            s=14,
            marker=class_marker(k),
            color=class_color(k),
            edgecolors="black",
            linewidths=0.25,
            zorder=2 + k,
        )
    handles = _class_handles(names, counts=[int(np.sum(labs == k)) for k in range(len(names))], edge="black")
    for cx, cy, r in circles:
        ax.add_patch(Circle((cx, cy), r, fill=False, edgecolor="black", linestyle="--", linewidth=1.2, zorder=5))
    if circles:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.2, label="class-region boundary"))
    ax.set_aspect("equal")
    _decorate(fig, ax, handles, title, "x₁", "x₂", legend_title="true class")
    return _save_figure(fig, canvas, Path(out_png))


def _check_runs(runs: Sequence[tuple], name: str) -> list[tuple]:
    out = list(runs)
    if not 1 <= len(out) <= len(RUN_COLORS):
        raise ValueError(f"{name} must hold 1 to {len(RUN_COLORS)} runs, got {len(out)}")
    checked = []
    for item in out:
        if len(item) != 3:
            raise ValueError(f"each item of {name} must be (label, steps, values)")
        steps = np.asarray(item[1])
        if steps.ndim != 1 or steps.size == 0:
            raise ValueError(f"run {item[0]!r}: steps must be a non-empty 1-D array, got shape {steps.shape}")
        checked.append((str(item[0]), steps, item[2]))
    return checked
