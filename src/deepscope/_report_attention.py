"""The report's *Attention* section: model view, a head view, rollout and per-head entropy of one example.

Layer 4: reads what :meth:`deepscope.attention.Attention.record` stored (no torch). Tokens come from
the user's text; the page escapes every caption and the figures draw them as plain text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope._attention_plots import (
    attention_entropy_figure,
    attention_head_view,
    attention_model_view,
    attention_rollout_figure,
)
from deepscope._report_page import Figure, Section, runs_holding
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["attention_sections"]

_P = TAGS.ATTENTION


def attention_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per run that holds attention weights."""
    sections = []
    for reader, meta, name in runs_holding(readers, f"{_P}/tokens"):
        tokens = [str(t) for t in meta[f"{_P}/tokens"]]
        weights = reader.tensor(f"{_P}/weights", 0).astype(np.float32)  # (L, H, T, T)
        entropy = reader.tensor(f"{_P}/entropy", 0)
        last = weights.shape[0] - 1
        focused = [int(h) for h in np.argsort(entropy[last])[:3]]  # the last layer's most focused heads
        figures = (
            Figure(
                attention_model_view(weights, fig_dir / f"attention_model_{name}.png", title="Every layer and head"),
                "Each thumbnail is one head's query × key attention (rows sum to 1).",
            ),
            Figure(
                attention_head_view(
                    weights[last],
                    tokens,
                    fig_dir / f"attention_heads_{name}.png",
                    heads=focused,
                    title=f"Layer {last}: its three most focused heads",
                ),
                "Each token on the left attends to the tokens on the right; darker lines carry more weight.",
            ),
            Figure(
                attention_rollout_figure(
                    reader.tensor(f"{_P}/rollout", 0),
                    tokens,
                    fig_dir / f"attention_rollout_{name}.png",
                    title="Attention rollout through every layer",
                ),
                "Abnar & Zuidema (2020): heads averaged, 0.5·W + 0.5·I per layer, rows normalised, layers multiplied.",
            ),
            Figure(
                attention_entropy_figure(entropy, math.log(len(tokens)), fig_dir / f"attention_entropy_{name}.png"),
                "Entropy of each head's attention rows, averaged over the tokens.",
            ),
        )
        text = f"{len(tokens)} tokens: {' '.join(tokens)}"
        sections.append(Section(f"attention-{name}", f"Attention ({reader.info.name})", (text,), figures))
    return sections
