"""The report's *Evaluation* sections: metrics with intervals, errors, groups and the spurious-cue audit.

Layer 4: reads what :meth:`deepscope.evaluation.Evaluation.record` stored (no torch). Class and group
names come from the user; the page template escapes them like every other string.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope import _evaluation_plots as plots
from deepscope._format import cell
from deepscope._report_page import Figure, Section, runs_holding
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["evaluation_sections", "interval_text", "row_interval_text"]

_P = TAGS.EVALUATION
_METRICS = ("precision", "recall", "specificity", "f1")


def evaluation_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """Per evaluation run: the metrics, the errors, the groups (if any) and the cue audit (if masks were given)."""
    sections = []
    for reader, meta, name in runs_holding(readers, f"{_P}/summary"):
        names = [str(n) for n in meta.get(TAGS.CLASS_NAMES) or []]
        sections.append(_metrics_section(reader, meta, names, fig_dir, name))
        sections.append(_errors_section(reader, meta, names, fig_dir, name))
        if f"{_P}/groups" in meta:
            sections.append(_groups_section(reader, meta, fig_dir, name))
        if f"{_P}/audit" in meta:
            sections.append(_audit_section(reader, meta, names, fig_dir, name))
    return sections


def interval_text(summary: dict[str, Any], key: str) -> str:
    return f"{cell(summary.get(key))} [{cell(summary.get(f'{key}_low'))}, {cell(summary.get(f'{key}_high'))}]"


def _metrics_section(reader: RunReader, meta: dict, names: list[str], fig_dir: Path, name: str) -> Section:
    s, level = meta[f"{_P}/summary"], meta[f"{_P}/summary"]["level"]
    rows = meta[f"{_P}/table"]
    figures = [
        Figure(
            plots.confusion_figure(
                reader.tensor(f"{_P}/confusion", 0), names, fig_dir / f"confusion_{name}.png", meta[f"{_P}/confused"]
            ),
            "Rows: the true class; columns: the predicted class. Left the counts, right each row as shares.",
        ),
        Figure(
            plots.class_metrics_figure(rows, level, fig_dir / f"class_metrics_{name}.png"),
            "Each dot is the metric on the data, each whisker its bootstrap interval (examples resampled).",
        ),
        Figure(
            plots.reliability_figure(meta[f"{_P}/calibration"], fig_dir / f"reliability_{name}.png"),
            "Calibrated bars reach the diagonal: of the predictions made with confidence p, a share p is right.",
        ),
    ]
    if f"{_P}/curves" in meta:
        info = meta[f"{_P}/curves"]
        curves = {part: reader.tensor(f"{_P}/curves/{part}", 0) for part in ("fpr", "tpr", "precision", "recall")}
        png = plots.curves_figure(curves, info["roc_auc"], info["average_precision"], fig_dir / f"curves_{name}.png")
        figures.append(Figure(png, "Two classes: every decision threshold on the probability of the second class."))
    if f"{_P}/embedding" in meta:
        info = meta[f"{_P}/embedding"]
        e = {part: reader.tensor(f"{_P}/embedding/{part}", 0) for part in ("points", "labels", "preds")}
        png = plots.embedding_figure(
            e["points"], e["labels"], e["preds"], names, fig_dir / f"embedding_{name}.png",
            title=f"{info['projection'].upper()} of {info['layer']}: {len(e['points'])} evaluation examples",
        )  # fmt: skip
        figures.append(Figure(png, "Clusters of crosses are groups of errors the features do not separate."))
    header = ("class", "support", *_METRICS)
    table = (
        header,
        *[(str(r["class"]), str(r["support"]), *(row_interval_text(r, k) for k in _METRICS)) for r in rows],
    )
    paragraphs = [
        f"Data: {meta.get(f'{_P}/description') or 'the given examples'} ({s['examples']} examples). Accuracy "
        f"{interval_text(s, 'accuracy')} against a majority-class baseline of {cell(s['majority_baseline'])}; balanced "
        f"accuracy (mean recall over the classes) {interval_text(s, 'balanced_accuracy')}; {level:.0%} bootstrap "
        f"intervals. Expected calibration error {cell(s['ece'])}.",
    ]
    if s["accuracy"] <= s["majority_baseline"]:
        paragraphs.append("The accuracy is not above the majority baseline: the model has learnt nothing usable here.")
    if "roc_auc" in s:
        paragraphs.append(f"ROC AUC {cell(s['roc_auc'])}, average precision {cell(s['average_precision'])}.")
    return Section(f"evaluation-{name}", f"Evaluation ({reader.info.name})", tuple(paragraphs), tuple(figures), table)


def row_interval_text(row: dict[str, Any], key: str) -> str:
    return f"{cell(row[key])} [{cell(row[f'{key}_low'])}, {cell(row[f'{key}_high'])}]"


def _errors_section(reader: RunReader, meta: dict, names: list[str], fig_dir: Path, name: str) -> Section:
    g = meta[f"{_P}/gallery"]
    pairs = meta[f"{_P}/confused"]
    table = (
        ("true class", "predicted as", "count", "share of the true class"),
        *[(names[t], names[p], str(n), cell(rate)) for t, p, n, rate in pairs],
    )
    figures = []
    paragraphs = ["The most confused pairs of classes." if pairs else "No example is misclassified."]
    captions = [
        f"#{i}: {names[t]} → {names[p]}\np(true) {pt:.2f}, p(pred) {pp:.2f}"
        for i, t, p, pt, pp in zip(
            g["indices"], g["labels"], g["preds"], g["true_probability"], g["pred_probability"], strict=True
        )
    ]
    order = "largest loss" if g["order"] == "loss" else "most confident"
    inputs = reader.tensor(f"{_P}/gallery/inputs", 0).astype(np.float32) if captions else None
    if inputs is not None and inputs.ndim == 4:  # images: drawn, with their Grad-CAM when there is one
        maps = reader.tensor(f"{_P}/gallery/maps", 0).astype(np.float32) if g["maps"] else None
        png = plots.error_gallery(
            inputs, maps, captions, fig_dir / f"errors_{name}.png", title=f"Misclassified examples, {order} first"
        )
        figures.append(Figure(png, "Each error with the Grad-CAM of the class it was mistaken for: what misled it."))
    elif captions:  # not images: the errors are listed
        listed = "; ".join(c.replace("\n", " ") for c in captions)
        paragraphs.append(f"Misclassified examples, {order} first: {listed}.")
    return Section(f"errors-{name}", f"Errors ({reader.info.name})", tuple(paragraphs), tuple(figures), table)


def _groups_section(reader: RunReader, meta: dict, fig_dir: Path, name: str) -> Section:
    g, level = meta[f"{_P}/groups"], meta[f"{_P}/summary"]["level"]
    png = plots.groups_figure(g, level, fig_dir / f"groups_{name}.png")
    table = (
        ("group", "examples", "accuracy", "gap to best", "balanced accuracy", "gap to best"),
        *[
            (n, str(c), cell(a), cell(ga), cell(b), cell(gb))
            for n, c, a, ga, b, gb in zip(
                g["names"], g["counts"], g["accuracy"]["value"], g["accuracy_gap"], g["balanced_accuracy"]["value"],
                g["balanced_accuracy_gap"], strict=True,
            )
        ],
    )  # fmt: skip
    text = (
        f"Metrics inside each group (fairlearn's definitions: the metric on the group's examples; the gap is the "
        f"best group's value minus this one). Largest accuracy gap between groups: {cell(g['largest_gap'])}."
    )
    return Section(
        f"groups-{name}",
        f"Groups ({reader.info.name})",
        (text,),
        (Figure(png, "Intervals resample inside each group."),),
        table,
    )


def _audit_section(reader: RunReader, meta: dict, names: list[str], fig_dir: Path, name: str) -> Section:
    a = meta[f"{_P}/audit"]
    figures = [
        Figure(
            plots.audit_figure(a, names, fig_dir / f"audit_{name}.png"),
            "The bar is the mean share of the predicted class's positive Grad-CAM that falls inside the object mask.",
        )
    ]
    if a["flagged"]:
        inputs = reader.tensor(f"{_P}/audit/example_inputs", 0).astype(np.float32)
        maps = reader.tensor(f"{_P}/audit/example_maps", 0).astype(np.float32)
        captions = [f"{names[c]} (#{i})" for c in a["flagged"] for i in a["examples"][str(c)]]
        png = plots.error_gallery(
            inputs, maps, captions, fig_dir / f"audit_examples_{name}.png",
            title="Flagged classes: the examples with the least attribution on the object",
        )  # fmt: skip
        figures.append(Figure(png, "Where the heat sits instead of on the object is the cue the model uses."))
        verdict = (
            f"Flagged as relying mostly on context: {', '.join(names[c] for c in a['flagged'])}. Less than "
            f"{a['max_share']:g} of their attribution falls on the object, and less than {a['min_concentration']:g}× "
            "what a uniform map would put there. Check the data for a cue that travels with these labels."
        )
    else:
        verdict = "No class is flagged: the attribution concentrates on the objects."
    per_class = a["per_class"]
    table = (
        ("class", "share inside the object", "interval", "object area", "flagged"),
        *[
            (n, cell(v), f"[{cell(lo)}, {cell(hi)}]", cell(area), "yes" if k in a["flagged"] else "no")
            for k, (n, v, lo, hi, area) in enumerate(
                zip(names, per_class["value"], per_class["low"], per_class["high"], a["class_area"], strict=True)
            )
        ],
    )
    groups = ""
    if a.get("per_group"):
        shares = ", ".join(f"{g} {cell(v)}" for g, v in zip(a["group_names"], a["per_group"]["value"], strict=True))
        groups = f" Per group: {shares}."
    text = f"Spurious-cue audit on {a['audited']} examples (class-stratified). {verdict}{groups}"
    return Section(f"audit-{name}", f"Spurious cues ({reader.info.name})", (text,), tuple(figures), table)
