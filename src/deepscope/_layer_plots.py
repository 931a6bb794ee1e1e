"""Layer figures: filter tiles, Zeiler–Fergus top-k blocks (projections beside patches) and feature maps.

Layer 4 (rendering), re-exported by :mod:`deepscope.plots`: numpy in, PNG out, no torch. How every
tile is scaled is written on the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from deepscope._media import _figure, _save_figure

__all__ = ["feature_map_grid", "filter_grid", "invariance_figure", "occlusion_figure", "top_activation_grid"]

Normalization = Literal["shared", "per_filter"]


def filter_grid(
    weights: np.ndarray, out_png: Path, *, normalize: Normalization = "shared", title: str = "Filters"
) -> Path:
    """One tile per filter of a convolution ``(out, in, kh, kw)``: RGB for 3 input channels, else one tile per input.

    ``normalize="shared"`` maps every weight to [0, 1] with one scale for the whole layer (mid-grey
    is 0, so tiles compare); ``"per_filter"`` stretches each filter to its own range (shapes show,
    magnitudes do not). The choice is printed in the title.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filter weights must be (out, in, kh, kw), got {w.shape}")
    if normalize not in ("shared", "per_filter"):
        raise ValueError(f"normalize must be 'shared' or 'per_filter', got {normalize!r}")
    out_channels, in_channels = w.shape[:2]
    rgb = in_channels == 3
    limit = (
        np.abs(w).reshape(out_channels, -1).max(1)
        if normalize == "per_filter"
        else np.full(out_channels, np.abs(w).max())
    )
    scaled = 0.5 + 0.5 * w / np.maximum(limit, 1e-12)[:, None, None, None]  # 0 -> mid-grey
    columns = min(out_channels, 16)
    rows = -(-out_channels // columns) * (1 if rgb else in_channels)
    tile = 56
    fig, canvas = _figure(40 + columns * tile, 70 + rows * tile)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for o in range(out_channels):
        block, column = divmod(o, columns)
        if rgb:
            axes[block, column].imshow(scaled[o].transpose(1, 2, 0), interpolation="nearest")
        else:
            for i in range(in_channels):
                axes[block * in_channels + i, column].imshow(
                    scaled[o, i], cmap="gray", vmin=0, vmax=1, interpolation="nearest"
                )
    scale = "one scale for the layer" if normalize == "shared" else "each filter on its own scale"
    layout = "RGB tiles" if rgb else f"one tile per input channel ({in_channels} rows per filter)"
    fig.suptitle(f"{title}\n{out_channels} filters {w.shape[2]}×{w.shape[3]}, {layout}; {scale}, grey = 0", fontsize=9)
    return _save_figure(fig, canvas, Path(out_png))


def top_activation_grid(
    patches: np.ndarray,
    projections: np.ndarray | None,
    inside: np.ndarray,
    channels: Sequence[int],
    scores: np.ndarray,
    out_png: Path,
    *,
    title: str = "Top activations",
    columns: int = 3,
) -> Path:
    """Zeiler & Fergus Fig. 2: per channel, its k strongest patches and (left) their DeconvNet projections.

    Args:
        patches: ``(C, k, C_in, h, w)`` input patches under each unit's receptive field.
        projections: the same shape, the units' projections (or None).
        inside: ``(C, k, h, w)``, False where the field leaves the image (drawn hatched grey).
        channels: the channel number of each block.
        scores: ``(C, k)`` the units' activations, shown above each patch.
        out_png: PNG path to write.
        title: figure title.
        columns: tiles per row within a block (3 gives the paper's 3 × 3).
    """
    p = np.asarray(patches, dtype=np.float64)
    if p.ndim != 5:
        raise ValueError(f"patches must be (C, k, C_in, h, w), got {p.shape}")
    c, k = p.shape[:2]
    rows = -(-k // columns)
    blocks_per_row = 2 if c > 1 else 1
    block_rows = -(-c // blocks_per_row)
    panels = 2 if projections is not None else 1
    tile = 46
    width = blocks_per_row * (panels * columns * tile + 30) + 20
    fig, canvas = _figure(width, 60 + block_rows * (rows * tile + 26))
    grid = fig.add_gridspec(block_rows, blocks_per_row * panels, wspace=0.08, hspace=0.35)
    for b in range(c):
        row, slot = divmod(b, blocks_per_row)
        sources = [("projection", projections[b]), ("patch", p[b])] if projections is not None else [("patch", p[b])]
        for s, (kind, tiles) in enumerate(sources):
            sub = grid[row, slot * panels + s].subgridspec(rows, columns, wspace=0.04, hspace=0.04)
            for r in range(rows * columns):
                ax = fig.add_subplot(sub[r // columns, r % columns])
                ax.set_xticks([])
                ax.set_yticks([])
                if r >= k:
                    ax.set_axis_off()
                    continue
                image = _tile(np.asarray(tiles[r]), np.asarray(inside[b, r]), signed=kind == "projection")
                ax.imshow(image, interpolation="nearest", cmap=None if image.ndim == 3 else "gray")
                if r == 0:
                    ax.set_title(f"ch {channels[b]} {kind}s", fontsize=7, loc="left")
                elif kind == "patch" and r < columns:
                    ax.set_title(f"{scores[b, r]:.2g}", fontsize=6)
    fig.suptitle(
        f"{title}\nper channel, the {k} strongest images: patches under the max unit's receptive field"
        + (
            "\n(right) and their DeconvNet projections (left, each on its own scale: ±99th percentile of |value|)"
            if projections is not None
            else ""
        ),
        fontsize=8,
    )
    return _save_figure(fig, canvas, Path(out_png))


def feature_map_grid(maps: np.ndarray, out_png: Path, *, title: str = "Feature maps", limit: int = 64) -> Path:
    """The ``(C, H, W)`` maps of one input, each on the shared colour scale of the layer (inferno, 0 at black)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"feature maps must be (C, H, W), got {m.shape}")
    shown = m[:limit]
    columns = min(len(shown), 16)
    rows = -(-len(shown) // columns)
    low, high = float(np.nanmin(shown)), float(np.nanmax(shown))
    fig, canvas = _figure(40 + columns * 52, 80 + rows * 52)
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < len(shown):
            image = ax.imshow(shown[index], cmap="inferno", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(str(index), fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="activation")
    extra = f" (first {limit} of {len(m)})" if len(m) > limit else ""
    fig.suptitle(f"{title}{extra}", fontsize=9)
    return _save_figure(fig, canvas, Path(out_png))


def _tile(values: np.ndarray, inside: np.ndarray, *, signed: bool) -> np.ndarray:
    """One patch or projection as an image in [0, 1]: RGB for 3 channels, grey otherwise; outside the image in grey."""
    v = values.transpose(1, 2, 0) if values.shape[0] in (1, 3) else values[:1].transpose(1, 2, 0)
    if signed:  # a projection: symmetric scale around 0 at the 99th percentile of |v|, so its sign and shape show
        limit = np.percentile(np.abs(v[inside]), 99) if inside.any() else 0.0
        v = 0.5 + 0.5 * v / (limit or 1.0)
    else:
        low, high = (v[inside].min(), v[inside].max()) if inside.any() else (0.0, 1.0)
        v = (v - low) / ((high - low) or 1.0)
    v = np.clip(v, 0.0, 1.0)
    v = np.where(inside[..., None], v, 0.75)
    return v if v.shape[-1] == 3 else v[..., 0]


def occlusion_figure(
    image: np.ndarray,
    projection: np.ndarray,
    activation: np.ndarray,
    probability: np.ndarray,
    top_class: np.ndarray,
    out_png: Path,
    *,
    worst: tuple[int, int],
    window: int,
    stride: int,
    channel: int,
    layer: str,
    target: int,
    class_names: Sequence[str],
    baseline: float,
) -> Path:
    """Zeiler & Fergus Fig. 7 for one image, per position of the square.

    Panels: (a) the input with the square, (b) the feature map's total activation, (c) its projection,
    (d) the probability of the correct class and (e) the most probable class.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch, Rectangle

    from deepscope._plot_style import class_color

    img = np.asarray(image, dtype=np.float64)
    rgb = np.clip(img.transpose(1, 2, 0) if img.shape[0] == 3 else np.repeat(img[:1].transpose(1, 2, 0), 3, 2), 0, 1)
    height, width = rgb.shape[:2]
    gh, gw = probability.shape
    first, half = window / 2 - 0.5, stride / 2  # each value drawn as a stride-wide cell around its square's centre
    extent = (first - half, first + (gw - 1) * stride + half, first + (gh - 1) * stride + half, first - half)
    fig, canvas = _figure(1180, 300)
    axes = fig.subplots(1, 5)
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].add_patch(
        Rectangle((worst[1] - 0.5, worst[0] - 0.5), window, window, facecolor=str(baseline), edgecolor="k")
    )
    axes[0].set_title(f"(a) input, {window}-px square\nwhere it hurts most", fontsize=8)
    shown = axes[1].imshow(activation, cmap="inferno", extent=extent, interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], shrink=0.7, label="total activation")
    axes[1].set_title(f"(b) {layer} map {channel}:\ntotal activation per square position", fontsize=8)
    axes[2].imshow(
        _tile(np.asarray(projection), np.ones((height, width), dtype=bool), signed=True), interpolation="nearest"
    )
    axes[2].set_title(f"(c) map {channel}'s strongest unit,\nDeconvNet projection", fontsize=8)
    shown = axes[3].imshow(probability, cmap="magma", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    fig.colorbar(shown, ax=axes[3], shrink=0.7, label="probability")
    axes[3].set_title(f"(d) p({class_names[target]})\nper square position", fontsize=8)
    present = sorted({int(k) for k in np.unique(top_class)})
    colors = ListedColormap([class_color(k) for k in range(len(class_names))])
    norm = BoundaryNorm(np.arange(len(class_names) + 1) - 0.5, len(class_names))
    axes[4].imshow(top_class, cmap=colors, norm=norm, extent=extent, interpolation="nearest")
    axes[4].legend(
        handles=[Patch(color=class_color(k), label=class_names[k]) for k in present],
        loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
    )  # fmt: skip
    axes[4].set_title("(e) most probable class\nper square position", fontsize=8)
    for ax in axes:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Occlusion study (Zeiler & Fergus Fig. 7): square {window} px every {stride} px, value {baseline}", fontsize=9
    )
    return _save_figure(fig, canvas, Path(out_png))


def invariance_figure(
    transform: str,
    values: np.ndarray,
    distances: dict[str, np.ndarray],
    probability: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    out_png: Path,
    *,
    class_names: Sequence[str] = (),
) -> Path:
    """Zeiler & Fergus Fig. 5 for one transform: feature distance per layer and the true-class probability.

    One line per image; a black ring where the prediction is wrong.
    """
    from deepscope._plot_style import class_color, class_marker

    unit = {"translation": "shift (pixels)", "scale": "scale factor", "rotation": "rotation (degrees)"}[transform]
    panels = [*distances.items(), ("p(true class)", probability)]
    fig, canvas = _figure(290 * len(panels) + 140, 300)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = []
    for ax, (name, curves) in zip(axes, panels, strict=True):
        for i in range(curves.shape[1]):
            (line,) = ax.plot(
                values, curves[:, i], color=class_color(i), marker=class_marker(i), markersize=3, linewidth=1
            )
            if name == "p(true class)":
                wrong = predicted[:, i] != labels[i]
                ax.scatter(values[wrong], curves[wrong, i], s=36, facecolors="none", edgecolors="black", linewidths=0.8)
                label = class_names[labels[i]] if len(class_names) > labels[i] else f"class {labels[i]}"
                line.set_label(f"image {i} ({label})")
                handles.append(line)
        ax.set_title(name if name == "p(true class)" else f"distance at {name}", fontsize=9)
        ax.set_xlabel(unit)
        ax.grid(True, color="0.9", linewidth=0.6)
    axes[0].set_ylabel("Euclidean distance to the original features")
    axes[-1].set_ylabel("probability")
    axes[-1].set_ylim(-0.02, 1.02)
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False, title="black ring: wrong class")
    fig.suptitle(f"Invariance to {transform} (Zeiler & Fergus Fig. 5)", fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))
