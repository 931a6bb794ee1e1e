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

__all__ = [
    "evolution_strip",
    "feature_map_grid",
    "filter_grid",
    "invariance_figure",
    "occlusion_figure",
    "scaled_tile",
    "top_activation_grid",
]

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

    The tiles are assembled into one mosaic image (fast to draw, whatever the number of channels).

    Args:
        patches: ``(C, k, C_in, h, w)`` input patches under each unit's receptive field.
        projections: the same shape, the units' projections (or None).
        inside: ``(C, k, h, w)``, False where the field leaves the image (drawn light grey).
        channels: the channel number of each block.
        scores: ``(C, k)`` the units' activations (the first row's are printed).
        out_png: PNG path to write.
        title: figure title.
        columns: tiles per row within a block (3 gives the paper's 3 × 3).
    """
    p = np.asarray(patches, dtype=np.float64)
    if p.ndim != 5:
        raise ValueError(f"patches must be (C, k, C_in, h, w), got {p.shape}")
    c, k, _, h, w = p.shape
    rows = -(-k // columns)
    gap, block_gap = 2, 10
    panel_w, panel_h = columns * (w + gap) - gap, rows * (h + gap) - gap
    panels = 2 if projections is not None else 1
    block_w, block_h = panels * panel_w + (panels - 1) * 6, panel_h + 14  # 14 px of caption above each block
    per_row = 2 if c > 1 else 1
    block_rows = -(-c // per_row)
    mosaic = np.ones((block_rows * (block_h + block_gap), per_row * (block_w + block_gap), 3))
    labels = []
    for b in range(c):
        top = (b // per_row) * (block_h + block_gap) + 14
        left = (b % per_row) * (block_w + block_gap)
        sources = [(projections[b], True), (p[b], False)] if projections is not None else [(p[b], False)]
        for s_index, (tiles, signed) in enumerate(sources):
            x0 = left + s_index * (panel_w + 6)
            for r in range(k):
                y, x = top + (r // columns) * (h + gap), x0 + (r % columns) * (w + gap)
                tile = scaled_tile(np.asarray(tiles[r]), np.asarray(inside[b, r]), signed=signed)
                mosaic[y : y + h, x : x + w] = tile if tile.ndim == 3 else tile[..., None]
        labels.append((left, top - 3, f"ch {channels[b]}: " + ", ".join(f"{v:.2g}" for v in scores[b, :columns])))
    scale = 2 if mosaic.shape[1] < 600 else 1
    fig, canvas = _figure(mosaic.shape[1] * scale + 20, mosaic.shape[0] * scale + 90, layout=None)
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 80 / (mosaic.shape[0] * scale + 90)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text in labels:
        ax.text(x, y, text, fontsize=6.5, va="bottom")
    fig.suptitle(
        f"{title}\nper channel, the {k} strongest images (activation of the first {columns} above): patches under the "
        "max unit's receptive field" + (
            " (right) and their DeconvNet projections\n(left, each on its own scale: ±99th percentile of |value|)"
            if projections is not None else ""
        ),
        fontsize=8,
    )  # fmt: skip
    return _save_figure(fig, canvas, Path(out_png))


def feature_map_grid(maps: np.ndarray, out_png: Path, *, title: str = "Feature maps", limit: int = 64) -> Path:
    """The ``(C, H, W)`` maps of one input as one mosaic, on the shared colour scale of the layer (inferno)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"feature maps must be (C, H, W), got {m.shape}")
    shown = m[:limit]
    columns = min(len(shown), 16)
    rows = -(-len(shown) // columns)
    h, w = shown.shape[1:]
    gap = max(1, h // 8)
    mosaic = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)  # NaN separators (white)
    for index, values in enumerate(shown):
        y, x = (index // columns) * (h + gap), (index % columns) * (w + gap)
        mosaic[y : y + h, x : x + w] = values
    scale = max(1, 720 // mosaic.shape[1])
    fig, canvas = _figure(mosaic.shape[1] * scale + 140, mosaic.shape[0] * scale + 70)
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps["inferno"].with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=cmap, interpolation="nearest", vmin=np.nanmin(shown), vmax=np.nanmax(shown))
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, shrink=0.8, label="activation")
    extra = f" (first {limit} of {len(m)})" if len(m) > limit else ""
    ax.set_title(f"{title}: {len(shown)} maps{extra}, row by row from channel 0, one colour scale", fontsize=9)
    return _save_figure(fig, canvas, Path(out_png))


def scaled_tile(values: np.ndarray, inside: np.ndarray, *, signed: bool) -> np.ndarray:
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
        scaled_tile(np.asarray(projection), np.ones((height, width), dtype=bool), signed=True), interpolation="nearest"
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


def evolution_strip(
    steps: Sequence[int],
    patches: np.ndarray,
    projections: np.ndarray,
    channels: Sequence[int],
    out_png: Path,
    *,
    title: str = "Feature evolution",
) -> Path:
    """Zeiler & Fergus Fig. 4: for each channel (a row pair), its strongest unit's projection and patch per snapshot.

    Args:
        steps: the ``S`` training steps shown (columns).
        patches: ``(S, C, C_in, h, w)`` the input under each strongest unit's receptive field.
        projections: the same shape, their DeconvNet projections.
        channels: the channel number of each row.
        out_png: PNG path to write.
        title: figure title.
    """
    p, q = np.asarray(patches, dtype=np.float64), np.asarray(projections, dtype=np.float64)
    if p.ndim != 5 or p.shape != q.shape or p.shape[0] != len(steps):
        raise ValueError(f"patches and projections must both be (steps, C, C_in, h, w), got {p.shape} and {q.shape}")
    n_steps, c, _, h, w = p.shape
    gap, label = max(1, w // 8), 3 * w
    mosaic = np.ones((c * (2 * h + gap + 6), label + n_steps * (w + gap), 3))
    everywhere = np.ones((h, w), dtype=bool)
    for r in range(c):
        for s in range(n_steps):
            x, y = label + s * (w + gap), r * (2 * h + gap + 6)
            for offset, source, signed in ((0, q, True), (h + gap, p, False)):
                tile = scaled_tile(source[s, r], everywhere, signed=signed)
                mosaic[y + offset : y + offset + h, x : x + w] = tile if tile.ndim == 3 else tile[..., None]
    scale = max(1, 720 // mosaic.shape[1])
    height = mosaic.shape[0] * scale + 130
    fig, canvas = _figure(mosaic.shape[1] * scale + 20, height, layout=None)
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 120 / height))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for r, channel in enumerate(channels):
        ax.text(0, r * (2 * h + gap + 6) + h, f"ch {channel}", fontsize=7, va="center")
    for s, step in enumerate(steps):
        ax.text(label + s * (w + gap) + w / 2, -1, f"step {step}", fontsize=6.5, ha="center", va="bottom")
    fig.suptitle(
        f"{title}\nper channel: the DeconvNet projection (top) and the input patch (bottom)\nof its strongest "
        "unit on the probe set, at each snapshot",
        fontsize=8,
    )
    return _save_figure(fig, canvas, Path(out_png))
