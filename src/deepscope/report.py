"""Build a self-contained HTML report from one run or a folder of runs.

The report reads run stores only (no torch import): it renders figures and animations with
:mod:`deepscope.plots` into ``figures/`` beside the report, then inlines every image into one
HTML file that makes no external request. User strings (run names, class names, config values)
are escaped by Jinja's autoescaping.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from deepscope import plots
from deepscope._probe_readers import class_names, scatter_sequence
from deepscope._progress import track
from deepscope._report_attention import attention_sections
from deepscope._report_attribution import attribution_sections
from deepscope._report_evaluation import evaluation_sections
from deepscope._report_featurevis import featurevis_sections
from deepscope._report_findings import findings_section
from deepscope._report_health import health_section
from deepscope._report_layers import evolution_sections, layer_sections
from deepscope._report_page import Figure, Section, write_page
from deepscope._report_page import slug as _slug
from deepscope._report_repro import repro_section
from deepscope._report_scale import scale_sections
from deepscope._report_text import text_sections
from deepscope._tags import TAGS
from deepscope.projection import PROJECTIONS, Projection
from deepscope.store import RunReader, find_runs

__all__ = ["Figure", "Section", "build_report", "write_page"]

_MAX_PANELS = 4  # runs shown side by side in one animation


def build_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    projection: Projection = "pca",
) -> Path:
    """Render the runs under ``path`` into one self-contained HTML file and return its path.

    Args:
        path: a run folder (holding ``run.sqlite``) or a folder of runs shown side by side.
        out: the HTML file to write (default ``<path>/report.html``); figures, GIF and MP4
            files are written to a ``figures/`` folder beside it.
        title: the report title (default: derived from the folder name).
        projection: how wide layer snapshots are drawn in 2-D: ``"pca"`` or ``"umap"`` (see
            :mod:`deepscope.projection`); frames are aligned to each other either way.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")
    root = Path(path)
    run_dirs = find_runs(root)
    out_file = Path(out) if out is not None else root / "report.html"
    groups = _group_runs(root, run_dirs)
    sections: list[Section] = []
    for group, dirs in track(groups.items(), "rendering report", total=len(groups)):
        fig_dir = out_file.parent / "figures" / group if len(groups) > 1 else out_file.parent / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        readers = [RunReader(d) for d in dirs]
        try:
            group_sections: list[Section] = []
            for build in _SECTIONS:
                result = build(readers, fig_dir, projection) if build is _representation else build(readers, fig_dir)
                group_sections.extend(result if isinstance(result, list) else [result] if result is not None else [])
        finally:
            for reader in readers:
                reader.close()
        if len(groups) > 1:  # one report, several experiments: prefix titles and anchors with the group
            group_sections = [
                dataclasses.replace(s, anchor=f"{_slug(group)}-{s.anchor}", title=f"{group} · {s.title}")
                for s in group_sections
            ]
        sections.extend(group_sections)
    write_page(out_file, title or f"deepscope report — {root.resolve().name}", sections, run_dirs)
    return out_file


def _group_runs(root: Path, run_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """Runs grouped by their folder (an experiment), earliest first; one group for a run or a flat folder."""
    groups: dict[str, list[Path]] = {}
    for run in run_dirs:
        parent = run.parent.resolve()
        key = (
            "."
            if parent == root.resolve() or run.resolve() == root.resolve()
            else str(parent.relative_to(root.resolve()))
        )
        groups.setdefault(key, []).append(run)
    if len(groups) == 1:
        return {root.resolve().name: next(iter(groups.values()))}
    return dict(sorted(groups.items(), key=lambda item: min(map(_created, item[1]))))  # a tour reads in run order


def _created(run: Path) -> float:
    with RunReader(run) as reader:
        return reader.info.created


# -- sections ---------------------------------------------------------------------------------------


def _overview(readers: Sequence[RunReader], fig_dir: Path) -> Section:
    rows: list[tuple[str, ...]] = [
        ("run", "status", "contents", "steps", "final accuracy", "majority baseline", "configuration")
    ]
    for reader in readers:
        info, meta, scalar_tags = reader.info, reader.meta(), reader.scalar_tags()
        trained = TAGS.LOSS in scalar_tags
        steps = reader.scalars(TAGS.LOSS).steps if trained else np.array([])
        accuracy = reader.scalars(TAGS.ACCURACY).values if TAGS.ACCURACY in scalar_tags else np.array([])
        baseline = meta.get(TAGS.MAJORITY_BASELINE)
        methods = meta.get(f"{TAGS.ATTRIBUTION}/methods") or []
        contents = [
            c for c in ("training" if trained else "", f"{len(methods)} attribution method(s)" * bool(methods)) if c
        ]
        config = ", ".join(f"{k}={v}" for k, v in info.config.items() if not isinstance(v, (list, dict)))
        rows.append(
            (
                info.name,
                info.status,
                ", ".join(contents) or "—",
                str(int(steps.max())) if steps.size else "—",
                f"{accuracy[-1]:.1%}" if accuracy.size else "—",
                f"{baseline:.1%}" if isinstance(baseline, (int, float)) else "—",
                config,
            )
        )
    return Section(
        "overview",
        "Runs",
        ("Each row is one recorded run. Accuracy is measured on the fixed probe set at the last snapshot.",),
        table=tuple(rows),
    )


def _task(readers: Sequence[RunReader], fig_dir: Path) -> Section | None:
    reader = readers[0]
    if TAGS.PROBE_INPUTS not in reader.tensor_tags():
        return None
    inputs = reader.tensor(TAGS.PROBE_INPUTS, 0)
    if inputs.ndim != 2 or inputs.shape[1] != 2:
        return None
    labels = reader.tensor(TAGS.PROBE_LABELS, 0)
    circles = [tuple(c) for c in reader.info.config.get("circles", [])]
    png = plots.toy_task_figure(inputs, labels, fig_dir / "task.png", circles=circles, class_names=class_names(reader))
    counts = np.bincount(labels)
    share = ", ".join(
        f"{name}: {n} ({n / counts.sum():.1%})" for name, n in zip(class_names(reader), counts, strict=False)
    )
    return Section(
        "task",
        "The task",
        (
            "Each point is one input; its colour and marker give its true class. The outlines are the regions "
            f"that define the positive class. Class balance: {share}.",
            "An imbalanced task has a trap: a network that always answers the majority class is already "
            f"{counts.max() / counts.sum():.1%} accurate. Any accuracy must be read against that baseline.",
        ),
        figures=(Figure(png, "The probe set: the inputs every snapshot is computed on."),),
    )


def _accuracy(readers: Sequence[RunReader], fig_dir: Path) -> Section | None:
    curves = []
    for reader in readers:
        if TAGS.ACCURACY not in reader.scalar_tags():
            continue
        acc = reader.scalars(TAGS.ACCURACY)
        series = {"accuracy": acc.values}
        if TAGS.BALANCED_ACCURACY in reader.scalar_tags():  # runs written by other tools may lack it
            series["balanced accuracy"] = reader.scalars(TAGS.BALANCED_ACCURACY).values
        curves.append((reader.info.name, acc.steps, series))
    if not curves:
        return None
    baseline = readers[0].meta().get(TAGS.MAJORITY_BASELINE)
    png = plots.training_curves(curves, fig_dir / "accuracy.png", baseline=baseline, xlabel=_step_label(readers[0]))
    return Section(
        "accuracy",
        "Accuracy against the majority baseline",
        (
            "Solid lines: accuracy on the probe set; dashed: balanced accuracy (the mean of the per-class "
            "recalls, which a majority-class predictor holds at 50 %). The dotted line is the majority-class "
            "baseline. Accuracy below it means the network has not yet learnt anything a constant answer "
            "would not give — the seed article's \u201c36 % \u2192 82 %\u201d is still below its 84.3 % baseline.",
            "What to look for: when balanced accuracy leaves 50 %, the network starts to separate the minority "
            "class; runs that differ only by their seed can take very different paths.",
        ),
        figures=(Figure(png, "Probe-set accuracy (solid) and balanced accuracy (dashed) per training step."),),
    )


def _loss(readers: Sequence[RunReader], fig_dir: Path) -> Section | None:
    curves = [
        (r.info.name, (s := r.scalars(TAGS.LOSS, max_points=2000)).steps, s.values)
        for r in readers
        if TAGS.LOSS in r.scalar_tags()
    ]
    if not curves:
        return None
    curves += [
        (f"{r.info.name} (validation)", (s := r.scalars(TAGS.EVAL_LOSS, max_points=2000)).steps, s.values)
        for r in readers
        if TAGS.EVAL_LOSS in r.scalar_tags()
    ]
    labels = readers[0].tensor(TAGS.PROBE_LABELS, 0) if TAGS.PROBE_LABELS in readers[0].tensor_tags() else None
    reference = None
    if labels is not None:
        prior = np.bincount(labels) / labels.size
        entropy = float(-(prior[prior > 0] * np.log(prior[prior > 0])).sum())
        reference = (entropy, f"input-blind predictor of the class frequencies ({entropy:.3f})")
    validated = any(label.endswith("(validation)") for label, _, _ in curves)
    png = plots.loss_curves(
        curves,
        fig_dir / "loss.png",
        title="Loss per step: training mini-batches and validation" if validated else "Training loss per step",
        xlabel=_step_label(readers[0]),
        window=25,
        reference=reference,
    )
    return Section(
        "loss",
        "Training loss",
        (
            "The mini-batch loss at every step (faint) and its moving average over 25 points. Series longer than "
            "2000 steps are downsampled keeping each bucket's minimum and maximum, so spikes stay visible. The "
            "dotted line is the loss of a model that ignores its input and predicts the class frequencies (for a "
            "cross-entropy loss): a run that stays near it has learnt nothing yet. A trend that stops falling "
            "while accuracy is still near the baseline points to a learning-rate or capacity problem.",
            *(
                [
                    "Validation curves (Recorder.eval_step) share the step axis: a validation loss that rises while "
                    "the training loss falls is over-fitting."
                ]
                if validated
                else []
            ),
        ),
        figures=(Figure(png, "Training loss (mini-batch) per step."),),
    )


def _representation(readers: Sequence[RunReader], fig_dir: Path, projection: Projection = "pca") -> list[Section]:
    layers = readers[0].meta().get(TAGS.LAYERS) or []
    sections = []
    for layer in layers:
        tag = TAGS.REPR.format(layer=layer)
        usable = [r for r in readers if tag in r.tensor_tags() and TAGS.PROBE_PRED in r.tensor_tags()]
        if not usable:
            continue
        shown = usable[:_MAX_PANELS]
        runs = _same_length([scatter_sequence(r, tag, projection) for r in shown])
        names = class_names(readers[0])
        slug = _slug(layer)
        width = shown[0].tensor(tag, int(shown[0].tensor_steps(tag)[0])).shape[1]
        axes = ("unit 1", "unit 2") if width <= 2 else ("PC 1", "PC 2") if projection == "pca" else ("UMAP 1", "UMAP 2")
        common = {"class_names": names, "layer": layer, "axis_names": axes}
        by_correct = plots.representation_animation(
            runs, fig_dir / f"repr_{slug}_correctness", color_by="correctness", **common
        )
        by_class = plots.representation_animation(runs, fig_dir / f"repr_{slug}_class", color_by="class", **common)
        how = (
            "its two units, each z-scored per frame"
            if width == 2
            else f"its first two principal components (of {width} stored dimensions), aligned frame to frame"
            if projection == "pca"
            else f"a UMAP embedding of its {width} stored dimensions, each frame started from the previous one "
            "and aligned to it (distances between far-apart groups are not meaningful in UMAP)"
        )
        paragraphs = [
            f"Every point of the probe set, as seen by layer {layer!r}: {how}. One panel per run, one frame per "
            "snapshot. First animation: blue circles are classified correctly, vermillion crosses wrongly. Second: "
            "the same frames in the true-class colours.",
            "What to look for: classes pulling apart into regions the following layers can separate; errors "
            "concentrated where classes still overlap; runs that differ only by their seed settling into different "
            "arrangements.",
        ]
        if width == 2 and len(names) == 2:
            paragraphs.append(
                "With two units and two classes the network must move the classes to opposite ends of a direction "
                "the last layer can threshold; watch which group of points is isolated first."
            )
        if len(usable) > len(shown):
            paragraphs.append(f"Showing the first {len(shown)} of {len(usable)} runs.")
        sections.append(
            Section(
                f"repr-{slug}",
                f"Inside the network: layer “{layer}” during training",
                tuple(paragraphs),
                figures=(
                    Figure(_pick(by_correct, ".gif"), "Coloured by correctness.", _downloads(by_correct)),
                    Figure(_pick(by_class, ".gif"), "Coloured by true class.", _downloads(by_class)),
                ),
            )
        )
    return sections


def _decision(readers: Sequence[RunReader], fig_dir: Path) -> Section | None:
    usable = [r for r in readers if TAGS.GRID_SCORE in r.tensor_tags() and TAGS.PROBE_INPUTS in r.tensor_tags()][
        :_MAX_PANELS
    ]
    if not usable:
        return None
    runs = []
    frames = max(len(r.tensor_steps(TAGS.GRID_SCORE)) for r in usable)
    for reader in usable:
        steps, grids = reader.tensors(TAGS.GRID_SCORE)
        pad = frames - len(steps)  # a shorter run holds its last frame
        runs.append((reader.info.name, np.pad(steps, (0, pad), mode="edge"), np.stack(grids + grids[-1:] * pad)))
    first = usable[0]
    extent = tuple(first.meta()[TAGS.GRID_EXTENT])
    paths = plots.decision_animation(
        runs,
        extent,  # type: ignore[arg-type]  # stored as a 4-item list
        first.tensor(TAGS.PROBE_INPUTS, 0),
        first.tensor(TAGS.PROBE_LABELS, 0),
        fig_dir / "decision",
        class_names=class_names(first),
    )
    snapshots = plots.decision_snapshots(
        runs,
        extent,
        first.tensor(TAGS.PROBE_INPUTS, 0),
        first.tensor(TAGS.PROBE_LABELS, 0),
        fig_dir / "decision_snapshots.png",
        class_names=class_names(first),
    )
    return Section(
        "decision",
        "The decision boundary in input space",
        (
            "The colour is the network's probability of the positive class on a grid over the inputs; the "
            "black line is the 0.5 contour, i.e. the decision boundary. Points keep their true-class colours.",
            "What to look for: the boundary first wraps the large disc, later (if ever) the small one. A run whose "
            "boundary never reaches the small disc is stuck below the accuracy it could reach.",
        ),
        figures=(
            Figure(_pick(paths, ".gif"), "Decision map over training, one panel per run.", _downloads(paths)),
            Figure(snapshots, "Snapshots at evenly spaced steps (rows: runs)."),
        ),
    )


# statistic -> (panel title, log scale, fixed limits, activation modules only)
def _provenance(readers: Sequence[RunReader], fig_dir: Path) -> Section:
    rows: list[tuple[str, ...]] = [("run", "run id", "created (UTC)", "versions")]
    for reader in readers:
        info = reader.info
        created = datetime.fromtimestamp(info.created, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        versions = ", ".join(f"{k} {v}" for k, v in info.versions.items())
        rows.append((info.name, info.run_id, created, versions))
    configs = tuple(f"{r.info.name}: {json.dumps(r.info.config, sort_keys=True)}" for r in readers)
    return Section("provenance", "Provenance", ("What produced these runs.",), table=tuple(rows), notes=configs)


_SECTIONS: list[Callable[[Sequence[RunReader], Path], Section | list[Section] | None]] = [
    _overview,
    findings_section,
    _task,
    _accuracy,
    _loss,
    _representation,
    _decision,
    health_section,
    evolution_sections,
    attribution_sections,
    layer_sections,
    featurevis_sections,
    attention_sections,
    text_sections,
    evaluation_sections,
    scale_sections,
    repro_section,
    _provenance,
]


# -- helpers ------------------------------------------------------------------------------------------


def _same_length(runs: list[plots.ScatterSequence]) -> list[plots.ScatterSequence]:
    """Pad shorter runs by repeating their last frame, so runs of different lengths animate side by side."""
    frames = max(len(r.steps) for r in runs)

    def pad(values: np.ndarray, n: int) -> np.ndarray:
        return np.concatenate([values, np.repeat(values[-1:], n, axis=0)]) if n else values

    return [
        dataclasses.replace(
            r,
            steps=pad(r.steps, frames - len(r.steps)),
            points=pad(r.points, frames - len(r.steps)),
            correct=pad(r.correct, frames - len(r.steps)),
            accuracy=pad(r.accuracy, frames - len(r.steps)),
        )
        for r in runs
    ]


def _step_label(reader: RunReader) -> str:
    batch = reader.info.config.get("batch_size")
    return f"training step (batches of {batch})" if batch else "training step"


def _pick(paths: Sequence[Path], suffix: str) -> Path:
    return next(p for p in paths if p.suffix == suffix)


def _downloads(paths: Sequence[Path]) -> tuple[Path, ...]:
    return tuple(p for p in paths if p.suffix in (".mp4", ".gif"))
