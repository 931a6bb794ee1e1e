"""The evidence plot of a doctor finding: lines over training steps or one bar per layer.

Layer 4 (rendering): the plot arrives as data (:class:`deepscope.diagnostics.EvidencePlot`, read
by attribute), so the report draws findings stored in a run without torch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from deepscope._media import _save_figure, _single_axes

__all__ = ["finding_figure", "finding_png"]

_LINE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")  # Okabe-Ito, colour-blind safe
_LINE_STYLES = ("-", "--", "-.", ":")
_REFERENCE_STYLES = ((0, (1, 2)), "--", "-.")
_SEVERITY_COLORS = {"error": "#D55E00", "warning": "#E69F00", "info": "#0072B2"}


def finding_figure(finding: Any, out_png: Path) -> Path:
    """Draw ``finding.plot`` (an evidence plot) into ``out_png``, titled with the finding's severity."""
    fig, canvas = _draw(finding)
    return _save_figure(fig, canvas, Path(out_png))


def finding_png(finding: Any) -> bytes:
    """The evidence plot as PNG bytes (notebook display)."""
    _, canvas = _draw(finding)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def _draw(finding: Any) -> tuple[Any, Any]:
    from matplotlib.lines import Line2D

    plot = finding.plot
    if plot is None:
        raise ValueError(f"finding {finding.check!r} has no evidence plot")
    fig, canvas, ax = _single_axes(640, 330)
    handles: list[Any] = []
    if plot.kind == "bars":
        label, names, values = plot.series[0]
        heights = np.asarray(values, dtype=np.float64)
        shown = np.where(np.isfinite(heights), heights, 0.0)
        if plot.log_y:
            shown = np.maximum(shown, np.finfo(np.float64).tiny)
        bars = ax.bar(range(len(names)), shown, color=_SEVERITY_COLORS.get(finding.severity, "#0072B2"), label=label)
        if label:
            handles.append(bars)
        ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=30 if len(names) > 4 else 0, ha="right")
    else:
        for i, (label, x, y) in enumerate(plot.series):
            (line,) = ax.plot(
                np.asarray(x, dtype=np.float64),
                np.asarray(y, dtype=np.float64),
                color=_LINE_COLORS[i % len(_LINE_COLORS)],
                linestyle=_LINE_STYLES[i % len(_LINE_STYLES)],
                linewidth=1.2,
                label=label,
            )
            handles.append(line)
    for i, (label, value) in enumerate(plot.references):
        if np.isfinite(value) and (value > 0 or not plot.log_y):
            style = {"color": "black" if i == 0 else "0.45", "linestyle": _REFERENCE_STYLES[i % 3], "linewidth": 1.4}
            ax.axhline(value, zorder=1, **style)
            handles.append(Line2D([], [], label=label, **style))
    if plot.span is not None:
        ax.axvspan(*plot.span, color="0.85", zorder=0)
    if plot.log_y:
        ax.set_yscale("log")
    if plot.y_limits is not None:
        ax.set_ylim(*plot.y_limits)
    ax.set_title(f"[{finding.severity.upper()}] {plot.title}", fontsize=10)
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False, fontsize=8)
    return fig, canvas
