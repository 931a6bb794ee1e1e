"""Attribution figures: heat-map overlays and the methods × images comparison grid.

Layer 4 (rendering), re-exported by :mod:`deepscope.plots`: numpy in, PNG out, no torch. Magnitude
maps use ``inferno``; signed maps a diverging map centred on 0 (``RdBu_r`` with symmetric limits),
and every figure shows its colour scale (DESIGN §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepscope._media import _figure, _save_figure

__all__ = ["MapRow", "SanityCurve", "as_rgb", "attribution_grid", "map_strip_png", "overlay", "sanity_curves"]

MAGNITUDE_CMAP = "inferno"
SIGNED_CMAP = "RdBu_r"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class MapRow:
    """One method's maps for every image of the grid.

    Attributes:
        label: row title, e.g. ``"gradcam"``.
        maps: ``(N, H, W)`` maps already normalised: [0, 1] for magnitudes, [-1, 1] when ``signed``.
        signed: use the diverging colour map centred on 0.
        notes: optional text under each image (e.g. ``"deletion AUC 0.12"``), one per image.
    """

    label: str
    maps: np.ndarray
    signed: bool = False
    notes: Sequence[str] = field(default=())


def as_rgb(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` or ``(N, 3, H, W)`` or grey ``(N, H, W)`` → ``(N, H, W, 3)`` float in [0, 1]."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3), (N, 3, H, W) or (N, H, W), got shape {np.shape(images)}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    low = arr.min(axis=(1, 2, 3), keepdims=True)
    high = arr.max(axis=(1, 2, 3), keepdims=True)
    return (arr - low) / np.where(high > low, high - low, 1.0)  # per-image min-max for display only


def overlay(image: np.ndarray, heat: np.ndarray, *, signed: bool = False, alpha: float = 0.5) -> np.ndarray:
    """Blend a normalised map onto an RGB image; returns ``(H, W, 3)`` floats in [0, 1].

    Magnitude maps (in [0, 1]) blend with ``alpha``; signed maps (in [-1, 1]) with ``alpha · |map|``.
    """
    from matplotlib import colormaps

    rgb = as_rgb(np.asarray(image)[None])[0]
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"map of shape {heat.shape} does not match the image's {rgb.shape[:2]}")
    if signed:  # opacity follows |map|: where the map is 0 the image is left as it is
        colours = colormaps[SIGNED_CMAP](heat * 0.5 + 0.5)[..., :3]
        weight = alpha * np.clip(np.abs(heat), 0.0, 1.0)[..., None]
    else:
        colours, weight = colormaps[MAGNITUDE_CMAP](heat)[..., :3], np.full((*heat.shape, 1), alpha)
    return (1 - weight) * rgb + weight * colours


def attribution_grid(
    images: np.ndarray,
    rows: Sequence[MapRow],
    out_png: Path,
    *,
    titles: Sequence[str] = (),
    title: str = "Attribution maps",
    tile_px: int = 128,
) -> Path:
    """A grid with one row per method and one column per image (the inputs on top), with colour bars.

    Args:
        images: the inputs, ``(N, H, W, 3)`` or ``(N, 3, H, W)``.
        rows: one :class:`MapRow` per method.
        out_png: PNG path to write.
        titles: one caption per image (e.g. true and predicted class).
        title: figure title.
        tile_px: size of each tile in pixels.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rgb = as_rgb(images)
    n = rgb.shape[0]
    if not rows:
        raise ValueError("attribution_grid needs at least one row of maps")
    for row in rows:
        if np.shape(row.maps) != (n, *rgb.shape[1:3]):
            raise ValueError(
                f"row {row.label!r} has maps of shape {np.shape(row.maps)}; expected {(n, *rgb.shape[1:3])}"
            )
    width = 130 + n * tile_px + 70
    height = 60 + (len(rows) + 1) * (tile_px + 22)
    fig, canvas = _figure(width, height, layout="constrained")
    axes = fig.subplots(len(rows) + 1, n, squeeze=False)
    for j in range(n):
        ax = axes[0, j]
        ax.imshow(rgb[j], interpolation="nearest")
        ax.set_title(titles[j] if j < len(titles) else f"input {j}", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=9)
    for i, row in enumerate(rows, start=1):
        cmap, limits = (SIGNED_CMAP, (-1.0, 1.0)) if row.signed else (MAGNITUDE_CMAP, (0.0, 1.0))
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(rgb[j].mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if row.signed:  # opacity follows |map|: where the map is 0 the image shows through, not white
                colours = colormaps[SIGNED_CMAP](np.asarray(row.maps[j]) * 0.5 + 0.5)
                colours[..., 3] = 0.9 * np.clip(np.abs(row.maps[j]), 0.0, 1.0)
                ax.imshow(colours, interpolation="nearest")
            else:
                ax.imshow(row.maps[j], cmap=cmap, vmin=limits[0], vmax=limits[1], alpha=0.6, interpolation="nearest")
            if j < len(row.notes):
                ax.set_xlabel(row.notes[j], fontsize=7)
        axes[i, 0].set_ylabel(row.label, fontsize=9)
        scale = ScalarMappable(Normalize(*limits), cmap)
        bar = fig.colorbar(scale, ax=axes[i, :].tolist(), fraction=0.02, pad=0.01)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("signed, scaled" if row.signed else "scaled to [0, 1]", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))


@dataclass(frozen=True)
class SanityCurve:
    """One method's cascading-randomisation result, for :func:`sanity_curves`.

    Attributes:
        label: the method.
        layers: the randomised layers, output side first.
        similarity: ``(L,)`` mean similarity to the original map after each cascade step.
        passed: the verdict.
    """

    label: str
    layers: Sequence[str]
    similarity: np.ndarray
    passed: bool


def sanity_curves(curves: Sequence[SanityCurve], out_png: Path, *, measure: str, threshold: float) -> Path:
    """Similarity to the original map as layers are randomised from the top (Adebayo et al. 2018, Fig. 2).

    One line per method, starting at 1 (the intact model); the dashed line is the verdict's threshold.
    """
    if not curves:
        raise ValueError("sanity_curves needs at least one method")
    fig, canvas = _figure(720, 420, layout="constrained")
    ax = fig.subplots()
    for i, curve in enumerate(curves):
        values = np.concatenate([[1.0], np.asarray(curve.similarity, dtype=np.float64)])
        verdict = "passes" if curve.passed else "fails"
        ax.plot(range(len(values)), values, marker=MARKERS[i % len(MARKERS)], label=f"{curve.label} ({verdict})")
    layers = list(curves[0].layers)
    ax.set_xticks(range(len(layers) + 1), ["intact", *[f"+ {name}" for name in layers]], rotation=30, ha="right")
    ax.axhline(threshold, color="0.4", linestyle="--", linewidth=1)
    ax.text(0.02, threshold, f" threshold {threshold:g}", va="bottom", fontsize=8, color="0.3",
            transform=ax.get_yaxis_transform())  # fmt: skip
    ax.set_xlabel("layers randomised, from the output down")
    ax.set_ylabel(f"{measure} similarity to the original map")
    ax.set_ylim(min(-0.1, float(np.nanmin([np.nanmin(c.similarity) for c in curves])) - 0.05), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Sanity check: does the map depend on the model's weights?", fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def map_strip_png(maps: np.ndarray, *, signed: bool, title: str, max_images: int = 8, tile_px: int = 128) -> bytes:
    """PNG bytes of up to ``max_images`` normalised maps in a row with a colour bar (for Jupyter display)."""
    import io

    maps = np.asarray(maps)[:max_images]
    n = maps.shape[0]
    fig, canvas = _figure(40 + n * tile_px + 60, tile_px + 50, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    cmap, limits = (SIGNED_CMAP, (-1.0, 1.0)) if signed else (MAGNITUDE_CMAP, (0.0, 1.0))
    artist = None
    for i, ax in enumerate(axes):
        artist = ax.imshow(maps[i], cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"sample {i}", fontsize=8)
    fig.colorbar(artist, ax=axes.tolist(), fraction=0.03, pad=0.01).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()
