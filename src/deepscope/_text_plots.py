"""Token attributions drawn as highlighted text: a PNG figure, and an HTML fragment for pages and notebooks.

Layer 4 (rendering), re-exported by :mod:`deepscope.plots`: token strings and numpy scores in, PNG
or HTML out, no torch. Red pushes the explained class up, blue pushes it down; the shade is the
score over the largest magnitude of its text. Tokens are drawn as plain text in the figure and
escaped in the HTML (they are the user's text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from markupsafe import Markup, escape

from deepscope._media import _figure, _save_figure

__all__ = ["AGAINST_COLOR", "FOR_COLOR", "highlighted_html", "token_attribution_figure"]

_WIDTH = 900  # pixels
_LINE = 26  # pixels per line of text
_MARGIN = 12.0
_FONT = 10
FOR_COLOR, AGAINST_COLOR = np.array([0.86, 0.2, 0.18]), np.array([0.15, 0.55, 0.82])
_SPAN = Markup('{}<span title="{:+.4f}" style="background:rgba({},{:.2f});padding:1px 3px;border-radius:3px">{}</span>')


def highlighted_html(rows: Sequence[tuple[Sequence[str], np.ndarray, str]]) -> Markup:
    """``rows``: ``(tokens, scores, caption)`` per text, as paragraphs of highlighted tokens (escaped)."""
    paragraphs = []
    for tokens, scores, caption in rows:
        peak = float(np.abs(scores).max()) if len(scores) else 0.0
        spans = []
        for token, score in zip(tokens, np.asarray(scores, dtype=float).tolist(), strict=True):
            joined = token.startswith("##")  # a WordPiece continuation joins its word
            rgb = ",".join(str(round(255 * c)) for c in (FOR_COLOR if score > 0 else AGAINST_COLOR))
            shade = abs(score) / peak if peak else 0.0
            spans.append(_SPAN.format("" if joined else " ", score, rgb, shade, escape(token[2:] if joined else token)))
        paragraphs.append(
            Markup('<p class="tokens" style="line-height:2"><small>{}</small><br>{}</p>').format(
                caption, Markup("").join(spans)
            )
        )
    return Markup("").join(paragraphs)


def token_attribution_figure(
    rows: Sequence[tuple[Sequence[str], np.ndarray, str]], out_png: Path, *, title: str
) -> Path:
    """``rows``: ``(tokens, scores, caption)`` per text; WordPiece continuations (``##ing``) join their word."""
    from matplotlib.font_manager import FontProperties

    fig, canvas = _figure(_WIDTH, 100, layout=None)
    renderer, font = canvas.get_renderer(), FontProperties(family="DejaVu Sans", size=_FONT)
    layout = [
        _lines(tokens, lambda piece: renderer.get_text_width_height_descent(piece, font, False)[0])
        for tokens, _, _ in rows
    ]
    height = 60 + sum(_LINE * (len(lines) + 1) + 10 for lines in layout)
    fig.set_size_inches(_WIDTH / fig.dpi, height / fig.dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, _WIDTH)
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.text(_MARGIN, 24, title, fontsize=11, va="center", weight="bold")
    y = 60.0
    for (_, scores, caption), lines in zip(rows, layout, strict=True):
        ax.text(_MARGIN, y, caption, fontsize=8, va="center", color="#444444")
        y += _LINE
        peak = float(np.abs(scores).max()) or 1.0
        for line in lines:
            for index, x, piece in line:
                score = float(scores[index])
                color = 1 - abs(score) / peak * (1 - (FOR_COLOR if score > 0 else AGAINST_COLOR))
                ax.text(
                    x, y, piece, fontproperties=font, va="center",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": tuple(color), "edgecolor": "none"},
                )  # fmt: skip
            y += _LINE
        y += 10
    return _save_figure(fig, canvas, Path(out_png))


def _lines(tokens: Sequence[str], width_of: Callable[[str], float]) -> list[list[tuple[int, float, str]]]:
    """Tokens placed on lines of the figure's width: ``(token index, x, text)``; ``width_of`` gives pixels."""
    lines: list[list[tuple[int, float, str]]] = [[]]
    x = _MARGIN
    for index, token in enumerate(tokens):
        joined = token.startswith("##")
        piece = token[2:] if joined else token
        width = width_of(piece) + 6  # the box's padding
        gap = 2.0 if joined else 8.0
        if lines[-1] and not joined and x + gap + width > _WIDTH - _MARGIN:
            lines.append([])
            x = _MARGIN
        elif lines[-1]:
            x += gap
        lines[-1].append((index, x, piece))
        x += width
    return lines
