"""Evaluation figures: confusion matrix, per-class metrics, reliability, errors, 2-D map, curves, groups, cue audit.

Layer 4 (rendering): numpy and plain Python in (what :mod:`deepscope._evaluation_record` stored), PNG
out, no torch. Intervals are drawn as whiskers; correct/wrong is never colour alone (DESIGN §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope._attribution_plots import as_rgb, overlay
from deepscope._media import _figure, _save_figure
from deepscope._plot_style import CORRECT_COLOR, WRONG_COLOR, class_color, class_marker

__all__ = [
    "audit_figure",
    "class_metrics_figure",
    "confusion_figure",
    "curves_figure",
    "embedding_figure",
    "error_gallery",
    "groups_figure",
    "reliability_figure",
    "shown_classes",
]

_MAX_MATRIX = 30  # classes drawn in full; above, only the classes of the most confused pairs


def _nan(values: Any) -> np.ndarray:
    """Stored lists (None for "not measured") as float arrays with NaN."""
    return np.array([np.nan if v is None else v for v in np.asarray(values, dtype=object).ravel()], float).reshape(
        np.shape(values)
    )


def shown_classes(confusion: np.ndarray, confused: Sequence[Any]) -> np.ndarray:
    """Every class up to 30; above, the classes of the most confused pairs (in pair order), at most 30, sorted."""
    classes = len(confusion)
    if classes <= _MAX_MATRIX:
        return np.arange(classes)
    involved = list(dict.fromkeys(int(c) for pair in confused for c in pair[:2]))[:_MAX_MATRIX]
    return np.array(sorted(involved) or [0, 1])


def confusion_figure(confusion: np.ndarray, names: Sequence[str], out_png: Path, confused: Sequence[Any] = ()) -> Path:
    """Counts and row-normalised shares side by side; above 30 classes, the classes of the top confusions only."""
    counts = np.asarray(confusion, np.int64)
    keep = shown_classes(counts, confused)
    note = "" if len(keep) == len(names) else f" — the {len(keep)} classes of the most confused pairs, of {len(names)}"
    sub = counts[np.ix_(keep, keep)]
    rates = sub / np.maximum(counts[keep].sum(1, keepdims=True), 1)
    side = max(360, 22 * len(keep) + 160)
    fig, canvas = _figure(2 * side + 60, side + 40)
    axes = fig.subplots(1, 2)
    labels = [names[k] for k in keep]
    for ax, values, title, fmt in (
        (axes[0], sub, "Counts", "d"), (axes[1], rates, "Share of the true class (row-normalised)", ".2f")
    ):  # fmt: skip
        image = ax.imshow(values, cmap="magma" if fmt == "d" else "viridis", vmin=0)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(keep)), labels, rotation=90 if len(keep) > 6 else 0, fontsize=7)
        ax.set_yticks(range(len(keep)), labels, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if len(keep) <= 12:
            for (i, j), v in np.ndenumerate(values):
                text = format(int(v), "d") if fmt == "d" else f"{v:.2f}"
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=7, color="white" if v < values.max() / 2 else "black"
                )
    fig.suptitle(f"Confusion matrix{note}", fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))


def class_metrics_figure(rows: Sequence[dict[str, Any]], level: float, out_png: Path) -> Path:
    """Precision, recall (sensitivity), specificity and F1 per class, each with its bootstrap interval."""
    keys = ("precision", "recall", "specificity", "f1")
    titles = ("Precision", "Recall (sensitivity)", "Specificity", "F1")
    names = [str(r["class"]) for r in rows]
    fig, canvas = _figure(980, max(260, 22 * len(rows) + 120))
    axes = fig.subplots(1, 4, sharey=True)
    ys = np.arange(len(rows))
    for ax, key, title in zip(axes, keys, titles, strict=True):
        value = _nan([r[key] for r in rows])
        low, high = _nan([r[f"{key}_low"] for r in rows]), _nan([r[f"{key}_high"] for r in rows])
        ax.errorbar(
            value, ys, xerr=np.abs(np.vstack([value - low, high - value])), fmt="o", color=CORRECT_COLOR,
            ecolor="#555555", capsize=3, markersize=4,
        )  # fmt: skip
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("value")
        ax.grid(alpha=0.3)
    axes[0].set_yticks(ys, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"Per-class metrics with {level:.0%} bootstrap intervals", fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))


def reliability_figure(calibration: dict[str, Any], out_png: Path) -> Path:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and the bins' counts."""
    edges = np.asarray(calibration["edges"], float)
    accuracy, confidence = _nan(calibration["accuracy"]), _nan(calibration["confidence"])
    counts = np.asarray(calibration["counts"], float)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, canvas = _figure(760, 380)
    left, right = fig.subplots(1, 2)
    left.bar(centres, np.nan_to_num(accuracy), width=width, color=CORRECT_COLOR, edgecolor="white", label="accuracy")
    gap = np.nan_to_num(confidence - accuracy)
    left.bar(
        centres, gap, bottom=np.nan_to_num(accuracy), width=width, color="none", edgecolor=WRONG_COLOR, hatch="//",
        label="gap to the mean confidence",
    )  # fmt: skip
    left.plot([0, 1], [0, 1], "--", color="#333333", label="perfect calibration")
    left.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy in the bin")
    left.set_title(
        f"Reliability diagram — ECE {calibration['ece']:.3f}, MCE {_or_nan(calibration['mce']):.3f}", fontsize=10
    )
    left.legend(fontsize=8, loc="upper left")
    right.bar(centres, counts, width=width, color="#999999", edgecolor="white")
    right.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="examples")
    right.set_yscale("log" if counts.max() > 50 * max(counts[counts > 0].min(), 1) else "linear")
    right.set_title("Examples per confidence bin", fontsize=10)
    return _save_figure(fig, canvas, Path(out_png))


def error_gallery(
    inputs: np.ndarray, maps: np.ndarray | None, captions: Sequence[str], out_png: Path, *, title: str
) -> Path:
    """Each example as its image, and beside it the image under its Grad-CAM (when there is one)."""
    count = len(captions)
    per = 2 if maps is not None else 1
    columns = min(count, 8 // per)
    rows = -(-count // columns)
    fig, canvas = _figure(125 * columns * per + 20, 150 * rows + 40)
    grid = fig.subplots(rows, columns * per, squeeze=False)
    rgb = as_rgb(np.asarray(inputs, np.float32))
    for ax in grid.flat:
        ax.axis("off")
    for i in range(count):
        r, c = divmod(i, columns)
        grid[r, c * per].imshow(rgb[i], interpolation="nearest")
        grid[r, c * per].set_title(captions[i], fontsize=7)
        if maps is not None:
            grid[r, c * per + 1].imshow(overlay(rgb[i], np.asarray(maps[i], float)), interpolation="nearest")
            grid[r, c * per + 1].set_title("Grad-CAM", fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))


def embedding_figure(
    points: np.ndarray, labels: np.ndarray, preds: np.ndarray, names: Sequence[str], out_png: Path, *, title: str
) -> Path:
    """The 2-D map twice: coloured (and shaped) by true class, and by correct (circle) / wrong (cross)."""
    from matplotlib.lines import Line2D

    points, labels, preds = np.asarray(points, float), np.asarray(labels), np.asarray(preds)
    fig, canvas = _figure(1000, 440)
    by_class, by_outcome = fig.subplots(1, 2)
    for k, name in enumerate(names):
        pick = labels == k
        if pick.any():
            by_class.scatter(*points[pick].T, s=10, color=class_color(k), marker=class_marker(k), label=name, alpha=0.7)
    wrong = labels != preds
    by_outcome.scatter(*points[~wrong].T, s=8, color=CORRECT_COLOR, marker="o", alpha=0.5)
    by_outcome.scatter(*points[wrong].T, s=28, color=WRONG_COLOR, marker="x", linewidths=1.2)
    handles = [
        Line2D([], [], linestyle="none", marker="o", color=CORRECT_COLOR, label=f"correct ({int((~wrong).sum())})"),
        Line2D([], [], linestyle="none", marker="x", color=WRONG_COLOR, label=f"misclassified ({int(wrong.sum())})"),
    ]
    if len(names) <= 20:
        by_class.legend(fontsize=7, markerscale=1.5, loc="best")
    by_outcome.legend(handles=handles, fontsize=8, loc="best")
    for ax, what in ((by_class, "true class"), (by_outcome, "correct or not")):
        ax.set_title(f"Coloured by {what}", fontsize=10)
        ax.set_xlabel("component 1")
        ax.set_ylabel("component 2")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, canvas, Path(out_png))


def curves_figure(curves: dict[str, np.ndarray], roc_auc: float, average_precision: float, out_png: Path) -> Path:
    """ROC and precision-recall curves of a two-class task."""
    fig, canvas = _figure(760, 380)
    roc, pr = fig.subplots(1, 2)
    roc.plot(curves["fpr"], curves["tpr"], color=CORRECT_COLOR)
    roc.plot([0, 1], [0, 1], "--", color="#999999", label="chance")
    roc.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)")
    roc.set_title(f"ROC — AUC {roc_auc:.3f}", fontsize=10)
    pr.plot(curves["recall"], curves["precision"], color=WRONG_COLOR, drawstyle="steps-post")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", ylim=(0, 1.02))
    pr.set_title(f"Precision–recall — average precision {average_precision:.3f}", fontsize=10)
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
    return _save_figure(fig, canvas, Path(out_png))


def groups_figure(groups: dict[str, Any], level: float, out_png: Path) -> Path:
    """Accuracy and balanced accuracy per group with intervals; the gap to the best group written beside."""
    names = list(groups["names"])
    ys = np.arange(len(names))
    fig, canvas = _figure(900, max(240, 30 * len(names) + 120))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key in zip(axes, ("accuracy", "balanced_accuracy"), strict=True):
        value, low, high = (_nan(groups[key][part]) for part in ("value", "low", "high"))
        ax.errorbar(
            value, ys, xerr=np.abs(np.vstack([value - low, high - value])), fmt="D", color=CORRECT_COLOR,
            ecolor="#555555", capsize=3,
        )  # fmt: skip
        gaps = _nan(groups[f"{key}_gap"])
        for y, v, gap in zip(ys, value, gaps, strict=True):
            if np.isfinite(v):
                ax.annotate(
                    f"gap {gap:+.3f}" if gap else "best", (v, y), xytext=(6, 6), textcoords="offset points", fontsize=7
                )
        ax.set_xlim(-0.02, 1.1)
        ax.set_title(key.replace("_", " ").capitalize(), fontsize=10)
        ax.set_xlabel("value")
        ax.grid(alpha=0.3)
    axes[0].set_yticks(ys, [f"{n} ({c})" for n, c in zip(names, groups["counts"], strict=True)], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"Per-group metrics with {level:.0%} intervals — largest accuracy gap {groups['largest_gap']:.3f}", fontsize=11
    )
    return _save_figure(fig, canvas, Path(out_png))


def audit_figure(audit: dict[str, Any], names: Sequence[str], out_png: Path) -> Path:
    """Share of the attribution inside the object per class (with intervals) against the object's area."""
    per_class = audit["per_class"]
    value, low, high = (_nan(per_class[part]) for part in ("value", "low", "high"))
    area = _nan(audit["class_area"])
    xs = np.arange(len(names))
    flagged = set(audit["flagged"])
    fig, canvas = _figure(max(520, 70 * len(names) + 200), 400)
    ax = fig.subplots()
    colors = [WRONG_COLOR if k in flagged else CORRECT_COLOR for k in range(len(names))]
    ax.bar(xs, np.nan_to_num(value), color=colors, edgecolor="black", hatch=["//" if k in flagged else "" for k in xs])
    ax.errorbar(xs, value, yerr=np.abs(np.vstack([value - low, high - value])), fmt="none", ecolor="#333333", capsize=4)
    ax.scatter(xs, area, marker="_", s=600, color="black", label="object area (a uniform map's share)", zorder=3)
    ax.scatter(
        xs, audit["min_concentration"] * area, marker="_", s=600, color="#999999", zorder=3,
        label=f"{audit['min_concentration']:g} × area",
    )  # fmt: skip
    ax.axhline(audit["max_share"], linestyle="--", color="#555555", label=f"share {audit['max_share']:g}")
    ax.set_xticks(xs, [f"{n}{' (flagged)' if k in flagged else ''}" for k, n in enumerate(names)], fontsize=8)
    ax.set(ylim=(0, 1), xlabel="true class", ylabel="share of positive Grad-CAM inside the object")
    ax.set_title(
        f"Where the model looks ({audit['audited']} audited examples)\n"
        "flagged (hatched): below both the dashed line and the grey mark",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.grid(alpha=0.3, axis="y")
    return _save_figure(fig, canvas, Path(out_png))


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
