"""Attention figures: the model view (layers × heads), a head view (token-to-token lines), rollout, entropy.

Layer 4 (rendering), re-exported by :mod:`deepscope.plots`: numpy and token strings in, PNG out, no
torch. Tokens are drawn as plain text (matplotlib escapes nothing because nothing is markup here).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope._media import _figure, _save_figure

__all__ = ["attention_entropy_figure", "attention_head_view", "attention_model_view", "attention_rollout_figure"]

_HEAD_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")


def attention_model_view(weights: np.ndarray, out_png: Path, *, title: str) -> Path:
    """Every head of every layer as a small ``query × key`` heat map (rows: layers, columns: heads)."""
    layers, heads = weights.shape[:2]
    fig, canvas = _figure(min(1400, 70 * heads + 80), 70 * layers + 70)
    grid = fig.subplots(layers, heads, squeeze=False)
    for (layer, head), ax in np.ndenumerate(grid):
        ax.imshow(weights[layer, head], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if layer == 0:
            ax.set_title(f"head {head}", fontsize=6)
        if head == 0:
            ax.set_ylabel(f"layer {layer}", fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def attention_head_view(
    weights: np.ndarray, tokens: Sequence[str], out_png: Path, *, heads: Sequence[int] = (0, 1, 2), title: str
) -> Path:
    """One layer: each query token (left) joined to the keys it attends to (right), line opacity = weight."""
    count = len(tokens)
    fig, canvas = _figure(260 * len(heads) + 40, 16 * count + 90)
    axes = fig.subplots(1, len(heads), squeeze=False)[0]
    for ax, head in zip(axes, heads, strict=True):
        color = _HEAD_COLORS[head % len(_HEAD_COLORS)]
        for i in range(count):
            for j in range(count):
                weight = float(weights[head, i, j])
                if weight > 0.02:
                    ax.plot([0, 1], [i, j], color=color, alpha=min(1.0, weight), linewidth=2 * weight + 0.3)
        for side, align in ((0, "right"), (1, "left")):
            for k, token in enumerate(tokens):
                ax.text(side + (-0.04 if side == 0 else 0.04), k, token, ha=align, va="center", fontsize=7)
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(count - 0.5, -0.5)
        ax.axis("off")
        ax.set_title(f"head {head}: query → key", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def attention_rollout_figure(rolled: np.ndarray, tokens: Sequence[str], out_png: Path, *, title: str) -> Path:
    """The rollout matrix with the tokens on both axes."""
    count = len(tokens)
    side = max(320, 18 * count + 160)
    fig, canvas = _figure(side + 80, side)
    ax = fig.subplots()
    image = ax.imshow(rolled, cmap="magma", vmin=0, interpolation="nearest")
    ax.set_xticks(range(count), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(count), tokens, fontsize=7)
    ax.set_xlabel("input token (key)")
    ax.set_ylabel("output token (query)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share drawn from the input token")
    ax.set_title(title, fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def attention_entropy_figure(entropy: np.ndarray, limit: float, out_png: Path) -> Path:
    """``(layers, heads)`` mean attention entropy; ``limit`` (log of the length) is an evenly spread head."""
    layers, heads = entropy.shape
    fig, canvas = _figure(60 * heads + 160, 40 * layers + 110)
    ax = fig.subplots()
    image = ax.imshow(entropy, cmap="viridis", vmin=0, vmax=limit, interpolation="nearest")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label=f"entropy (nats; {limit:.2f} = uniform)")
    ax.set_title("How spread each head's attention is (low: a few tokens)", fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))
