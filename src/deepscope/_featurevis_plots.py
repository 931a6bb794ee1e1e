"""Feature-visualisation figures: a tile grid of optimised images, and trained against untrained side by side.

Layer 4 (rendering), re-exported by :mod:`deepscope.plots`: numpy in, PNG out, no torch. Images are
shown as they are (the parameterisation keeps them in ``[0, 1]``), never rescaled per tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope._media import _figure, _save_figure

__all__ = ["feature_vis_figure", "objective_curves"]


def feature_vis_figure(
    images: np.ndarray, labels: Sequence[str], out_png: Path, *, title: str, rows: Sequence[str] = ()
) -> Path:
    """``(N, 3, H, W)`` images in ``[0, 1]`` as tiles, 8 per row, each captioned; ``rows`` names each row."""
    count = len(images)
    columns = min(count, 8)
    lines = -(-count // columns)
    fig, canvas = _figure(110 * columns + (90 if rows else 20), 125 * lines + 45)
    grid = fig.subplots(lines, columns, squeeze=False)
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for i, image in enumerate(np.asarray(images, np.float32)):
        ax = grid[divmod(i, columns)]
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")
        if i < len(labels):
            ax.set_title(labels[i], fontsize=7)
    for r, name in enumerate(rows[:lines]):
        grid[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def objective_curves(curves: Sequence[np.ndarray], names: Sequence[str], out_png: Path) -> Path:
    """The mean objective over each result's images against the step, one panel (and scale) per result."""
    fig, canvas = _figure(330 * len(curves) + 20, 300)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, curve, name in zip(axes, curves, names, strict=True):
        values = np.asarray(curve, np.float64).reshape(len(curve), -1).mean(1)
        ax.plot(np.arange(1, len(values) + 1), values, color="#0072B2")
        ax.set(xlabel="optimisation step", ylabel="objective (mean over the images)")
        ax.set_title(name, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("The objective during the optimisation (on the transformed images)", fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))
