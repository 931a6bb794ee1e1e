"""The report's *Attention* section: model view, head views (static and interactive), rollout and entropy.

Layer 4: reads what :meth:`deepscope.attention.Attention.record` stored (no torch). Tokens come from
the user's text; the page escapes every caption and the figures draw them as plain text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope._attention_panel import head_view_html
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
_PANEL_TOKENS = 64  # 6 layers × 12 heads × 64² weights ≈ 1 MB of page; beyond, the static views only


def attention_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per run that holds attention weights."""
    sections = []
    for reader, meta, name in runs_holding(readers, f"{_P}/tokens"):
        tokens = [str(t) for t in meta[f"{_P}/tokens"]]
        weights = reader.tensor(f"{_P}/weights", 0).astype(np.float32)  # (L, H, T, T)
        entropy = reader.tensor(f"{_P}/entropy", 0)
        view = meta.get(f"{_P}/view") or {}
        last = int(view.get("layer", weights.shape[0] - 1))
        focused = [int(h) for h in view.get("heads") or np.argsort(entropy[last])[:3]]  # default: most focused
        layers = [str(n) for n in meta.get(f"{_P}/layers") or range(weights.shape[0])]
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
                    title=f"Layer {last}: heads {', '.join(map(str, focused))}"
                    + (" (the most focused)" if "heads" not in view else ""),
                ),
                f"Layer {last}, heads {', '.join(map(str, focused))}: each token on the left attends to the tokens "
                "on the right; darker lines carry more weight.",
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
        interactive = len(tokens) <= _PANEL_TOKENS
        panel = {"element_id": f"panel-{name}", "layer": last, "heads": focused}
        widgets = (head_view_html(tokens, weights, layers, **panel),) if interactive else ()
        note = (
            "Below, the interactive head view: pick a layer and heads; hover a token to see its row, click to keep it."
            if interactive
            else f"The interactive head view is left out above {_PANEL_TOKENS} tokens (its page size grows as tokens²)."
        )
        title = f"Attention ({reader.info.name})"
        sections.append(Section(f"attention-{name}", title, (text, note), figures, widgets=widgets))
    return sections
