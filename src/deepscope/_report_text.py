"""The report's *Token attributions* section: each text's tokens highlighted by their score.

Layer 4: reads what :meth:`deepscope.text.TokenAttribution.record` stored (no torch). The page gets
both the highlighted text (HTML, every token escaped) and the same as a PNG figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deepscope._report_page import Figure, Section, runs_holding
from deepscope._tags import TAGS
from deepscope._text_plots import highlighted_html, token_attribution_figure
from deepscope.store import RunReader

__all__ = ["text_sections"]

_P = TAGS.TEXT


def text_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per run that holds token attributions."""
    sections = []
    for reader, meta, name in runs_holding(readers, f"{_P}/tokens"):
        method = str(meta[f"{_P}/method"])
        rows = [
            ([str(t) for t in tokens], reader.tensor(f"{_P}/scores", i), str(caption))
            for i, (tokens, caption) in enumerate(zip(meta[f"{_P}/tokens"], meta[f"{_P}/captions"], strict=True))
        ]
        figure = Figure(
            token_attribution_figure(rows, fig_dir / f"tokens_{name}.png", title=f"Token attributions ({method})"),
            "Red tokens push the explained class up, blue ones down; the shade is relative to each text's largest.",
        )
        text = (
            f"{method.replace('_', ' ').capitalize()} on the token embeddings: a token's score is its attribution "
            "summed over the embedding dimension. For Integrated Gradients the scores of a text add up to the "
            "class score minus that of the baseline (the padding tokens), up to the completeness error shown."
        )
        title = f"Token attributions ({reader.info.name})"
        sections.append(Section(f"tokens-{name}", title, (text,), (figure,), widgets=(highlighted_html(rows),)))
    return sections
