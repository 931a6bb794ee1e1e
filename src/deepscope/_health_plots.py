"""Layer-health figures: layer × step heat maps and the gradient-flow plot.

Layer 4 (rendering), re-exported by :mod:`deepscope.plots`: numpy in, PNG out, no torch. Layers
are drawn from the input (top) to the output (bottom), steps left to right; every panel has its
colour scale. Values that do not apply (e.g. the gradient of a ReLU) are left blank, and
infinite values (a diverging run) are marked with a red cross.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepscope._media import _figure, _save_figure

__all__ = ["HealthPanel", "gradient_flow", "health_heatmaps"]


@dataclass(frozen=True)
class HealthPanel:
    """One heat map: a statistic of some layers over the recorded steps.

    Attributes:
        title: e.g. ``"dead channels (share)"``.
        layers: the rows, input side first.
        values: ``(layers, steps)``.
        log: colour by ``log10`` (for norms and ratios spanning decades).
        limits: fixed colour limits (e.g. ``(0, 1)`` for shares); default: the data's range.
    """

    title: str
    layers: Sequence[str]
    values: np.ndarray
    log: bool = False
    limits: tuple[float, float] | None = None


def health_heatmaps(steps: np.ndarray, panels: Sequence[HealthPanel], out_png: Path, *, title: str) -> Path:
    """Heat maps side by side, one per statistic, sharing the step axis."""
    if not panels:
        raise ValueError("health_heatmaps needs at least one panel")
    steps = np.asarray(steps)
    rows = max(len(p.layers) for p in panels)
    fig, canvas = _figure(300 * len(panels) + 120, max(300, 22 * rows + 140))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        values = np.asarray(panel.values, dtype=np.float64)
        if values.shape != (len(panel.layers), len(steps)):
            raise ValueError(
                f"panel {panel.title!r}: values {values.shape} != (layers, steps) {(len(panel.layers), len(steps))}"
            )
        broken = np.isinf(values)  # NaN means "does not apply"; an infinite measured value means divergence
        shown = np.where(broken, np.nan, values)
        if panel.log:  # a zero (a layer without gradient) shows at the bottom of the scale, not blank
            positive = shown[shown > 0]  # ... the smallest measured value's, so one zero cannot stretch the scale
            floor = float(positive.min()) if positive.size else np.finfo(np.float64).tiny
            shown = np.log10(np.maximum(shown, floor), where=~np.isnan(shown), out=shown.copy())
        finite = shown[np.isfinite(shown)]
        low, high = panel.limits or ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
        if panel.log and panel.limits is not None:
            low, high = np.log10(low), np.log10(high)
        image = ax.imshow(
            shown,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=low,
            vmax=high if high > low else low + 1,
        )
        ys, xs = np.nonzero(broken)
        if ys.size:
            ax.scatter(xs, ys, marker="x", color="red", s=16, label="not finite")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(panel.title, fontsize=9)
        ax.set_yticks(range(len(panel.layers)), panel.layers, fontsize=7)
        ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int))
        ax.set_xticks(ticks, [str(int(steps[t])) for t in ticks], fontsize=7)
        ax.set_xlabel("training step", fontsize=8)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        if panel.log:
            bar.set_label("log10", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))


def gradient_flow(
    runs: Sequence[tuple[str, Sequence[str], np.ndarray, np.ndarray]], out_png: Path, *, title: str = "Gradient flow"
) -> Path:
    """Gradient norm per layer (input → output) at a few steps, one panel per run, log scale.

    Args:
        runs: ``(label, layers, steps (T,), grad_norms (layers, T))`` per run.
        out_png: PNG path to write.
        title: figure title.
    """
    if not runs:
        raise ValueError("gradient_flow needs at least one run")
    fig, canvas = _figure(440 * len(runs) + 40, 400)
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, (label, layers, steps, norms) in zip(axes, runs, strict=True):
        norms = np.asarray(norms, dtype=np.float64)
        picks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 4)).round().astype(int))
        colours = [(0.2 + 0.6 * k / max(len(picks) - 1, 1),) * 3 for k in range(len(picks))][::-1]
        for colour, t in zip(colours, picks, strict=True):
            ax.plot(range(len(layers)), norms[:, t], marker="o", color=colour, label=f"step {int(steps[t])}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("layer (input → output)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("gradient L2 norm of the layer's parameters", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))
