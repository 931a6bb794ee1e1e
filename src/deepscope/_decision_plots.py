"""Decision maps: a network's predicted probability over a 2-D input space, animated or as snapshots.

Layer 4 (rendering), private to :mod:`deepscope.plots`, which re-exports :func:`decision_animation` and
:func:`decision_snapshots`. Probability maps use a lightened, binned ``PuOr`` (diverging, centred on 0.5)
with a colour bar and the 0.5 decision contour; data points keep their true-class colour and marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepscope._media import _FORMATS, _animate, _check_fps, _figure, _formats, _frame_size, _save_figure, _wrap
from deepscope._plot_style import _class_handles, _points_and_labels, _vector, class_color, class_marker

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["decision_animation", "decision_snapshots", "probability_cmap"]


def probability_cmap() -> tuple[Any, Any]:
    """Binned PuOr (orange = class 0, purple = class 1), lightened so that markers stay visible."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    base = colormaps["PuOr"]
    colors = base(np.linspace(0.12, 0.88, 10))[:, :3]
    colors = 0.45 * colors + 0.55  # blend 55 % towards white
    return ListedColormap(colors, name="deepscope_prob"), BoundaryNorm(np.linspace(0, 1, 11), 10)


def _check_grid(runs_grid: Sequence[tuple[str, np.ndarray, np.ndarray]], extent: Any) -> list:
    runs = list(runs_grid)
    if not 1 <= len(runs) <= 4:
        raise ValueError(f"runs_grid must hold 1 to 4 runs, got {len(runs)}")
    if len(extent) != 4 or not (extent[0] < extent[1] and extent[2] < extent[3]):
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {extent}")
    out = []
    for item in runs:
        if len(item) != 3:
            raise ValueError("each runs_grid item must be (label, steps, probs)")
        label, steps, probs = str(item[0]), np.asarray(item[1]), np.asarray(item[2], dtype=np.float64)
        if probs.ndim != 3 or probs.shape[0] == 0 or min(probs.shape[1:]) < 2:
            raise ValueError(f"run {label!r}: probs must have shape (F, G, G) with F >= 1, G >= 2, got {probs.shape}")
        _vector(steps, probs.shape[0], "steps", f"run {label!r}", "frames in probs")
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise ValueError(f"run {label!r}: probs must be finite probabilities in [0, 1]")
        out.append((label, steps, probs))
    return out


def _decision_panel(
    ax: Axes,
    extent: Sequence[float],
    probs0: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    size: float,
    edge: float = 0.3,
) -> tuple[Any, Any, list[Any]]:
    from matplotlib.collections import LineCollection

    cmap, norm = probability_cmap()
    gy, gx = probs0.shape
    dx, dy = (extent[1] - extent[0]) / (gx - 1), (extent[3] - extent[2]) / (gy - 1)
    image = ax.imshow(
        probs0,
        cmap=cmap,
        norm=norm,
        origin="lower",
        interpolation="bilinear",
        interpolation_stage="data",
        aspect="auto",
        extent=(extent[0] - dx / 2, extent[1] + dx / 2, extent[2] - dy / 2, extent[3] + dy / 2),
    )
    contour = ax.add_collection(LineCollection([], colors="black", linewidths=1.6, zorder=3))
    dots = [
        ax.scatter(
            points[labels == k, 0],
            points[labels == k, 1],
            s=size,
            marker=class_marker(k),
            color=class_color(k),
            edgecolors="black",
            linewidths=edge,
            zorder=4,
        )
        for k in range(n_classes)
    ]
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.tick_params(labelsize=8)
    return image, contour, dots


def _boundary(extent: Sequence[float], probs: np.ndarray) -> list[np.ndarray]:
    import contourpy

    gy, gx = probs.shape
    xs, ys = np.linspace(extent[0], extent[1], gx), np.linspace(extent[2], extent[3], gy)
    return contourpy.contour_generator(xs, ys, probs, line_type=contourpy.LineType.Separate).lines(0.5)


def _decision_legend(fig: Figure, names: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        *_class_handles(names, edge="black"),
        Line2D([], [], color="black", linewidth=1.6, label=f"decision boundary P({names[1]}) = 0.5"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9)


def _decision_colorbar(fig: Figure, axes: Any, names: Sequence[str]) -> None:
    from matplotlib.cm import ScalarMappable

    cmap, norm = probability_cmap()
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=axes,
        ticks=np.linspace(0, 1, 6),
        fraction=0.03,
        shrink=0.85,
        aspect=25,
        pad=0.02,
    )
    bar.set_label(f"predicted P({names[1]})")
    bar.ax.axhline(0.5, color="black", linewidth=1.6)
    bar.ax.tick_params(labelsize=8)


def decision_animation(
    runs_grid: Sequence[tuple[str, np.ndarray, np.ndarray]],
    extent: tuple[float, float, float, float],
    points: np.ndarray,
    labels: np.ndarray,
    out_base: Path,
    *,
    class_names: Sequence[str] | None = None,
    fps: int = 10,
    formats: Sequence[str] = _FORMATS,
) -> list[Path]:
    """Animate each run's decision function in input space, one panel per run.

    Args:
        runs_grid: ``(label, steps (F,), probs (F, G, G))`` per run, where ``probs[f, i, j]`` is P(class 1)
            at ``(x_j, y_i)`` with ``x = linspace(xmin, xmax, G)`` and ``y = linspace(ymin, ymax, G)``.
        extent: ``(xmin, xmax, ymin, ymax)`` of the grid.
        points: ``(N, 2)`` data points, drawn in true-class colour and marker.
        labels: ``(N,)`` true classes.
        out_base: Output path without extension; writes ``.gif``, ``.mp4`` and ``_last.png``.
        class_names: Names of the classes (default ``"class 0"``, ``"class 1"``, ...).
        fps: Frames per second.
        formats: Any of ``"gif"`` and ``"mp4"``.

    Returns:
        The paths written, in ``formats`` order, then the last-frame PNG.
    """
    runs = _check_grid(runs_grid, extent)
    pts, labs, names = _points_and_labels(points, labels, class_names)
    fmts = _formats(formats)
    _check_fps(fps)
    n_frames = runs[0][2].shape[0]
    if any(r[2].shape[0] != n_frames for r in runs):
        raise ValueError("all runs in runs_grid need the same number of frames")

    width, height = _frame_size(len(runs), extra_width=96)
    fig, canvas = _figure(width, height)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    fig.suptitle(
        _wrap(
            f"Decision function in input space during training: shading = predicted P({names[1]}), "
            "black line = 0.5 boundary, markers = true class",
            width,
        ),
        fontsize=11,
    )
    _decision_legend(fig, names)
    _decision_colorbar(fig, axes, names)
    animated: list[Artist] = []
    panels = []
    for ax, (label, steps, probs) in zip(axes, runs, strict=True):
        image, contour, dots = _decision_panel(ax, extent, probs[0], pts, labs, len(names), size=10)
        title = ax.set_title(f"{label} — step {int(steps[0])}", fontsize=9)
        animated += [image, contour, *dots, *ax.spines.values(), title]
        panels.append((label, steps, probs, image, contour, title))

    def update(i: int) -> None:
        for label, steps, probs, image, contour, title in panels:
            image.set_data(probs[i])
            contour.set_segments(_boundary(extent, probs[i]))
            title.set_text(f"{label} — step {int(steps[i])}")

    keys = [
        *dict.fromkeys(class_color(k) for k in range(len(names))),
        *probability_cmap()[0].colors,
    ]  # every colour band stays exact
    return _animate(fig, canvas, animated, update, n_frames, out_base, fmts, fps, keys)


def decision_snapshots(
    runs_grid: Sequence[tuple[str, np.ndarray, np.ndarray]],
    extent: tuple[float, float, float, float],
    points: np.ndarray,
    labels: np.ndarray,
    out_png: Path,
    *,
    n_columns: int = 5,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Static grid of decision maps: one row per run, ``n_columns`` evenly spaced training steps.

    Args:
        runs_grid: As for :func:`decision_animation`.
        extent: ``(xmin, xmax, ymin, ymax)`` of the grid.
        points: ``(N, 2)`` data points.
        labels: ``(N,)`` true classes.
        out_png: PNG path to write.
        n_columns: Number of snapshots per run (fewer if a run has fewer frames).
        class_names: Names of the classes.

    Returns:
        ``out_png``.
    """
    from matplotlib.ticker import MaxNLocator

    runs = _check_grid(runs_grid, extent)
    pts, labs, names = _points_and_labels(points, labels, class_names)
    if n_columns < 1:
        raise ValueError(f"n_columns must be >= 1, got {n_columns}")
    n_cols = min(n_columns, min(r[2].shape[0] for r in runs))
    fig, canvas = _figure(160 * n_cols + 112, 160 * len(runs) + 112)
    axes = fig.subplots(len(runs), n_cols, squeeze=False, sharex=True, sharey=True)
    fig.suptitle(f"Decision function at {n_cols} moments of training (shading = predicted P({names[1]}))", fontsize=10)
    for row, (label, steps, probs) in enumerate(runs):
        frames = np.unique(np.linspace(0, probs.shape[0] - 1, n_cols).round().astype(int))
        for col, ax in enumerate(axes[row]):
            if col >= len(frames):
                ax.set_visible(False)
                continue
            f = frames[col]
            _, contour, _ = _decision_panel(ax, extent, probs[f], pts, labs, len(names), size=4, edge=0.15)
            contour.set_segments(_boundary(extent, probs[f]))
            ax.set_title(f"step {int(steps[f])}", fontsize=8)
            ax.label_outer()
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
            ax.xaxis.label.set_size(8)
            ax.yaxis.label.set_size(8)
        axes[row][0].set_ylabel(f"{label}\nx₂", fontsize=8)
    _decision_legend(fig, names)
    _decision_colorbar(fig, axes, names)
    return _save_figure(fig, canvas, Path(out_png))
