"""Visual encoding and house style shared by every figure (DESIGN §6), and checks on the labelled points.

Layer 4 (rendering), private to :mod:`deepscope.plots`. Colour-blind-safe Okabe–Ito colours, and
correct/wrong is never colour alone: correct = blue filled circle, misclassified = larger vermillion
cross drawn on top. True classes get both a colour and a marker shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CORRECT_COLOR = "#0072B2"  # Okabe–Ito blue
WRONG_COLOR = "#D55E00"  # Okabe–Ito vermillion
# class 0 = orange ("yellow" in the seed article), class 1 = blue, then the rest of Okabe–Ito
CLASS_COLORS = ("#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CLASS_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MAX_CLASSES = len(CLASS_COLORS) * len(CLASS_MARKERS)  # distinct (colour, marker) pairs


def class_color(k: int) -> str:
    """Colour of class ``k``: Okabe–Ito, cycling every 8 classes."""
    return CLASS_COLORS[k % len(CLASS_COLORS)]


def class_marker(k: int) -> str:
    """Marker of class ``k``: shifted by one per colour cycle, so (colour, marker) stays unique up to 64 classes."""
    return CLASS_MARKERS[(k + k // len(CLASS_COLORS)) % len(CLASS_MARKERS)]


def _vector(values: Any, length: int, name: str, where: str, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{where}: {name} has shape {arr.shape} but there are {length} {what}")
    return arr


def _labels(labels: Any, n_points: int, where: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n_points:
        raise ValueError(f"{where}: points has {n_points} rows but labels has {arr.shape[0]}")
    if arr.size and (not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0):
        raise ValueError(f"{where}: labels must be non-negative integers")
    return arr.astype(np.int64)


def _class_names(class_names: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    n_classes = max(int(labels.max()) + 1 if labels.size else 0, 2)
    if class_names is None:
        return [f"class {k}" for k in range(n_classes)]
    names = [str(name) for name in class_names]
    if len(names) < n_classes:
        raise ValueError(f"labels contain class {n_classes - 1} but only {len(names)} class_names were given")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"at most {MAX_CLASSES} classes can be told apart by colour and marker, got {len(names)}")
    return names


def _points_and_labels(points: Any, labels: Any, class_names: Sequence[str] | None) -> tuple:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    labs = _labels(labels, pts.shape[0], "decision map")
    return pts, labs, _class_names(class_names, labs)


def _class_handles(names: Sequence[str], counts: Sequence[int] | None = None, edge: str = "none") -> list[Artist]:
    from matplotlib.lines import Line2D

    handles = []
    for k, name in enumerate(names):
        label = name if counts is None else f"{name} ({counts[k]}, {counts[k] / max(sum(counts), 1):.1%})"
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker=class_marker(k),
                markersize=6,
                markerfacecolor=class_color(k),
                markeredgecolor=edge,
                markeredgewidth=0.5,
                label=label,
            )
        )
    return handles


def _reference_line(ax: Axes, value: float, text: str) -> Artist:
    """Draw a dotted black horizontal line at ``value``; return its legend handle labelled ``text``."""
    from matplotlib.lines import Line2D

    style = {"color": "black", "linestyle": (0, (1, 2)), "linewidth": 1.5}
    ax.axhline(value, zorder=1, **style)
    return Line2D([], [], label=text, **style)


def _decorate(
    fig: Figure,
    ax: Axes,
    handles: Sequence[Artist],
    title: str,
    xlabel: str,
    ylabel: str,
    legend_title: str | None = None,
) -> None:
    """House style of a one-axes figure: title, axis labels, light grid, legend outside on the right."""
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9, title=legend_title)
