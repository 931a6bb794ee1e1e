"""Dataset-explanation figures: the mean map of each explained class, and examples of each class under their maps.

Layer 4 (rendering): numpy in, PNG out, no torch. Maps arrive as ``|m|`` min–max scaled to [0, 1]
per item; every tile of a figure shares one inferno scale (shown by its colour bar), so classes and
examples compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope._attribution_plots import MAGNITUDE_CMAP, as_rgb, overlay
from deepscope._media import _figure, _save_figure

__all__ = ["class_means_figure", "examples_figure"]

_TILE = 120  # pixels per tile


def class_means_figure(means: np.ndarray, titles: Sequence[str], out_png: Path, *, title: str) -> Path:
    """``(K, H, W)`` mean maps in [0, 1], one tile per class (captioned by ``titles``).

    The scale runs from 0 to the largest mean value: averages of maps that sit in different places are
    faint, and a fixed [0, 1] would hide where they concentrate.
    """
    means = np.asarray(means, np.float64)
    top = float(means.max()) if means.size and means.max() > 0 else 1.0
    count = len(means)
    columns = min(max(count, 1), 8)
    rows = max(-(-count // columns), 1)
    fig, canvas = _figure(_TILE * columns + 90, (_TILE + 24) * rows + 50)
    grid = fig.subplots(rows, columns, squeeze=False)
    for ax in grid.flat:
        ax.set_axis_off()
    image = None
    for k, mean in enumerate(means):
        ax = grid[divmod(k, columns)]
        image = ax.imshow(mean, cmap=MAGNITUDE_CMAP, vmin=0.0, vmax=top, interpolation="nearest")
        ax.set_title(titles[k], fontsize=8)
    if image is not None:
        bar = fig.colorbar(image, ax=grid.ravel().tolist(), fraction=0.03, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("mean of the scaled |map|", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def examples_figure(
    inputs: np.ndarray,
    maps: np.ndarray,
    rows: Sequence[tuple[str, Sequence[int]]],
    captions: Sequence[str],
    out_png: Path,
    *,
    title: str,
) -> Path:
    """One row per class (``(label, indices)``): each example's input, and beside it the input under its map.

    Args:
        inputs: ``(M, C, H, W)`` images (each min–max scaled for display).
        maps: ``(M, h, w)`` maps in [0, 1]; resized to the image by nearest neighbour if the sizes differ.
        rows: a row label and the indices of its examples.
        captions: one per example (e.g. its position in the data).
        out_png: PNG path to write.
        title: figure title.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rgb = as_rgb(np.asarray(inputs, np.float32))
    columns = 2 * max((len(indices) for _, indices in rows), default=1)
    fig, canvas = _figure(_TILE * columns + 110, (_TILE + 24) * max(len(rows), 1) + 50)
    grid = fig.subplots(max(len(rows), 1), columns, squeeze=False)
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for r, (label, indices) in enumerate(rows):
        grid[r, 0].set_ylabel(label, fontsize=8)
        for j, i in enumerate(indices):
            heat = _fit(np.asarray(maps[i], np.float64), rgb.shape[1:3])
            grid[r, 2 * j].imshow(rgb[i], interpolation="nearest")
            grid[r, 2 * j].set_title(captions[i], fontsize=7)
            grid[r, 2 * j + 1].imshow(overlay(rgb[i], heat), interpolation="nearest")
            grid[r, 2 * j + 1].set_title("map", fontsize=7)
    scale = ScalarMappable(Normalize(0.0, 1.0), MAGNITUDE_CMAP)
    bar = fig.colorbar(scale, ax=grid.ravel().tolist(), fraction=0.02, pad=0.01)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("scaled |map| (drawn at half opacity)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def _fit(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``heat`` resized to ``shape`` by nearest neighbour (unchanged when it already has that shape)."""
    rows = np.arange(shape[0]) * heat.shape[0] // shape[0]
    columns = np.arange(shape[1]) * heat.shape[1] // shape[1]
    return heat[np.ix_(rows, columns)]
