"""Where a classifier fails and for whom: metrics with intervals, confusions, errors, calibration, groups, cues.

:func:`evaluate` streams the data once through the model under ``torch.inference_mode()`` (one
forward pass per batch; the penultimate features are captured by a hook on the same pass) and keeps
per example only its class probabilities, label, loss and, for an evenly spaced subsample, its
features. From them (:mod:`deepscope._classification_metrics`): accuracy, balanced accuracy and the
majority-class baseline; per-class precision, recall (sensitivity), specificity, F1 and support with
bootstrap intervals; the confusion matrix and the most confused pairs; a reliability diagram with the
expected calibration error; ROC and precision-recall curves for two classes; per-group metrics with
the gap to the best group (fairlearn's definitions); a 2-D map (PCA or UMAP) of the features coloured
by class and correctness; for every confusion cell its highest-loss examples with their inputs
(:mod:`deepscope._evaluation_cells`, a running top-k per cell). Gradients are computed only for the
gallery (the Grad-CAM of the shown errors) and, with object masks, for the spurious-cue audit's sample
(:mod:`deepscope._cue_audit`).

Example:
    >>> from deepscope.demos.shapes_cnn import train_shapes_cnn  # doctest: +SKIP
    >>> model, test = train_shapes_cnn()  # doctest: +SKIP
    >>> result = evaluate(model, (test.images, test.labels), test.class_names, masks=test.masks)  # doctest: +SKIP
    >>> result.metrics.accuracy.value, result.audit.flagged  # doctest: +SKIP
    (0.988, [])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from deepscope._classification_metrics import (
    BinaryCurves,
    Calibration,
    ClassMetrics,
    GroupMetrics,
    binary_curves,
    calibration,
    class_metrics,
    group_metrics,
    most_confused,
)
from deepscope._cue_audit import CueAudit, cue_audit
from deepscope._data import dataset_size, fetch, indexable
from deepscope._evaluation_cells import CellExamples
from deepscope._evaluation_cells import cell_examples as cell_examples_of
from deepscope._evaluation_stream import Stream, feature_layer, merge_streams, stream_work, subsample
from deepscope.attribution import explain
from deepscope.attribution.metrics import boxes_to_masks
from deepscope.errors import ShardsFailedError
from deepscope.layers import LayerSpec, guess_spatial_layer, model_device
from deepscope.repro import library_versions
from deepscope.scale.backends import Coverage, Ray, run_whole

__all__ = ["CellExamples", "Embedding", "Evaluation", "Gallery", "evaluate"]

Order = Literal["loss", "confidence"]
Projection = Literal["pca", "umap"]


@dataclass(frozen=True, slots=True)
class Gallery:
    """The misclassified examples shown, worst first, with what the model looked at.

    Attributes:
        order: ``"loss"`` (largest cross-entropy first) or ``"confidence"`` (most confident mistakes first).
        indices: ``(M,)`` dataset positions; ``labels``, ``preds``: ``(M,)`` true and predicted classes.
        true_probability: ``(M,)`` the probability given to the true class; ``pred_probability``: to the predicted one.
        losses: ``(M,)`` cross-entropy of each example.
        inputs: ``(M, ...)`` the inputs, float32 on the CPU.
        maps: ``(M, H, W)`` Grad-CAM of the predicted class scaled to [0, 1] per example, or None (no spatial layer).
    """

    order: str
    indices: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    true_probability: np.ndarray
    pred_probability: np.ndarray
    losses: np.ndarray
    inputs: np.ndarray
    maps: np.ndarray | None


@dataclass(frozen=True, slots=True)
class Embedding:
    """A 2-D map of a layer's features on (a subsample of) the evaluation set.

    Attributes:
        layer: the layer whose output (or, for the default, the head's input) was mapped.
        projection: ``"pca"`` or ``"umap"``.
        points: ``(M, 2)`` coordinates; ``indices``, ``labels``, ``preds``: ``(M,)`` for each point.
    """

    layer: str
    projection: str
    points: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    preds: np.ndarray


@dataclass(frozen=True, slots=True)
class Evaluation:
    """:func:`evaluate`'s result; :meth:`record` stores it in a run for the report.

    ``cells`` holds each confusion cell's highest-loss examples (None with ``cell_examples=0``).
    """

    class_names: tuple[str, ...]
    metrics: ClassMetrics
    confused: list[tuple[int, int, int, float]]
    calibration: Calibration
    curves: BinaryCurves | None
    groups: GroupMetrics | None
    gallery: Gallery
    embedding: Embedding | None
    audit: CueAudit | None
    images: int
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    cells: CellExamples | None = None
    coverage: Coverage | None = None  # where the pass ran (every example is always covered)

    def summary(self) -> dict[str, float]:
        """The headline numbers: accuracy and balanced accuracy (with intervals), the majority baseline, ECE."""
        m = self.metrics
        out = {
            "accuracy": m.accuracy.value, "accuracy_low": m.accuracy.low, "accuracy_high": m.accuracy.high,
            "balanced_accuracy": m.balanced_accuracy.value, "balanced_accuracy_low": m.balanced_accuracy.low,
            "balanced_accuracy_high": m.balanced_accuracy.high, "majority_baseline": m.majority_baseline,
            "ece": self.calibration.ece,
        }  # fmt: skip
        if self.groups is not None:
            out["largest_group_gap"] = self.groups.largest_gap
        if self.curves is not None:
            out["roc_auc"], out["average_precision"] = self.curves.roc_auc, self.curves.average_precision
        return {key: float(value) for key, value in out.items()}

    def table(self) -> list[dict[str, Any]]:
        """One row per class: support, precision, recall (sensitivity), specificity and F1 with their intervals."""
        m = self.metrics
        rows = []
        for c, name in enumerate(self.class_names):
            row: dict[str, Any] = {"class": name, "support": int(m.support[c])}
            for key in ("precision", "recall", "specificity", "f1"):
                interval = getattr(m, key)
                row[key] = float(interval.value[c])
                row[f"{key}_low"], row[f"{key}_high"] = float(interval.low[c]), float(interval.high[c])
            rows.append(row)
        return rows

    def figures(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """The confusion matrix, per-class metrics, reliability diagram and (with masks) the audit, as PNGs."""
        from deepscope import _evaluation_plots as plots  # the presentation layer, loaded to draw
        from deepscope._store_writer import json_safe

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        names, m = list(self.class_names), self.metrics
        paths = [
            plots.confusion_figure(m.confusion, names, out / "confusion.png", self.confused),
            plots.class_metrics_figure(json_safe(self.table()), m.level, out / "class_metrics.png"),
            plots.reliability_figure(json_safe(self.calibration), out / "reliability.png"),
        ]
        if self.audit is not None:
            a = self.audit
            audit = json_safe(
                {"per_class": a.per_class, "class_area": a.class_area, "flagged": a.flagged, "max_share": a.max_share,
                 "min_concentration": a.min_concentration, "audited": len(a.indices)}
            )  # fmt: skip
            paths.append(plots.audit_figure(audit, names, out / "audit.png"))
        return paths

    def _repr_html_(self) -> str:
        import base64
        import html
        import tempfile

        from deepscope._format import cell

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{cell(v)}</td></tr>" for k, v in self.summary().items())
        with tempfile.TemporaryDirectory() as tmp:
            images = [base64.b64encode(p.read_bytes()).decode("ascii") for p in self.figures(tmp)]
        pictures = "".join(f'<img src="data:image/png;base64,{image}">' for image in images)
        return f"<table>{rows}</table>{pictures}"

    def record(self, run_dir: str | os.PathLike[str], *, name: str = "evaluation", overwrite: bool = False) -> Path:
        """Write the evaluation into the run store at ``run_dir`` (``evaluation/`` tags); return the folder."""
        from deepscope._evaluation_record import record_evaluation

        return record_evaluation(self, Path(run_dir), name=name, overwrite=overwrite)


def evaluate(
    model: nn.Module,
    data: Any,
    class_names: Sequence[str] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    masks: Tensor | None = None,
    *,
    boxes: Tensor | Sequence[Sequence[float]] | None = None,
    batch_size: int = 256,
    layer: LayerSpec | None = None,
    gallery: int = 12,
    order: Order = "loss",
    cell_examples: int = 6,
    audit_samples: int = 512,
    projection: Projection = "pca",
    max_points: int = 2000,
    resamples: int = 1000,
    level: float = 0.95,
    bins: int = 15,
    seed: int = 0,
    description: str = "",
    backend: str | Ray = "local",
    model_factory: Callable[[], nn.Module] | None = None,
) -> Evaluation:
    """Evaluate a classifier on labelled data (see the module docstring).

    Args:
        model: the classifier: logits ``(N, K)``, or one logit ``(N,)``/``(N, 1)`` for two classes (left unchanged).
        data: ``(inputs, labels)`` tensors, a dataset of ``(x, y)`` items or an unshuffled ``DataLoader`` of them.
        class_names: one name per class (default ``"0"``, ``"1"``…).
        groups: one group value per example, in data order (sex, site, scanner…): per-group metrics and gaps.
        masks: ``(N, H, W)`` object masks, in data order: the spurious-cue audit.
        boxes: instead of masks, ``(N, 4)`` object boxes ``(x0, y0, x1, y1)`` in pixels (or ``(N, K, 4)``).
        batch_size: examples per forward pass (a ``DataLoader`` keeps its own).
        layer: the layer mapped in 2-D (its output, spatially averaged); default: the input of the last
            ``nn.Linear`` (no map without one).
        gallery: misclassified examples shown (0: none).
        order: the gallery's order, ``"loss"`` or ``"confidence"``.
        cell_examples: examples kept, with their inputs, for every cell (true i, predicted j) of the confusion
            matrix (0: none): the highest-loss ones (ties: the earlier position), which in an off-diagonal cell
            are the worst mistakes and on the diagonal the least confident correct predictions. Chosen by a
            running top-k per cell during the pass (only positions and losses are held), then fetched back by
            position like the gallery's; inputs only for images ``(N, C, H, W)`` from data that can be fetched
            again (not a shuffled loader), else positions and numbers only. At most 2,000 examples in all
            (fewer when 2,000 inputs would pass 256 MiB): under that cap every cell keeps its worst example
            before any keeps a second, and ``result.cells.capped`` says so.
        audit_samples: examples the cue audit explains (class-stratified).
        projection: ``"pca"`` or ``"umap"`` (needs ``deepscope[umap]``).
        max_points: at most this many examples in the 2-D map (evenly spaced over the data).
        resamples: bootstrap resamples of every interval.
        level: the intervals' coverage.
        bins: calibration bins.
        seed: bootstrap and audit sample.
        description: what the data is, for the report.
        backend: ``"local"`` (one stream here), or ``"ray"`` / :class:`deepscope.scale.Ray`: the inference pass runs
            in shards on Ray workers and their rows are put back in data order (the same result to rounding);
            the metrics, gallery, cells and cue audit are then computed here. A shard that fails after its
            retries makes ``evaluate`` raise, naming its examples: metrics of part of the data are not reported.
        model_factory: with Ray, a function that builds the architecture on each worker (the weights are sent).

    Raises:
        ValueError: a label out of range, groups or masks of the wrong length or size, an empty dataset, or
            a setting out of range (each message says what is valid).
        ShardsFailedError: on Ray, a shard failed after its retries (the message names its examples).
    """
    _check_settings(gallery, order, projection, max_points, bins, cell_examples)
    size = dataset_size(data)
    if (groups is not None or masks is not None or boxes is not None or gallery) and not indexable(data):
        raise ValueError(
            "this DataLoader shuffles or has no map-style dataset, so its examples cannot be matched with groups, "
            "masks or the gallery: pass the dataset, or a DataLoader with shuffle=False"
        )
    work = partial(
        stream_work, batch_size=batch_size, feature=feature_layer(model, layer), keep=subsample(size, max_points),
        per_cell=int(cell_examples),
    )  # fmt: skip
    parts, coverage = run_whole(
        work, model, data, backend=backend, model_factory=model_factory, minimum=batch_size, label="evaluate"
    )
    if not coverage.complete:  # metrics, groups and galleries would silently describe another dataset
        raise ShardsFailedError(f"evaluate needs every example, but shards failed: {coverage.summary()}")
    stream = merge_streams(parts)
    selector = stream.cells
    count = len(stream.labels)
    if count == 0:
        raise ValueError("data holds no example")
    classes = stream.probabilities.shape[1]
    names = _class_names(class_names, classes)
    _check_labels(stream.labels, classes, names)
    group_values = _check_groups(groups, count)
    if boxes is not None:
        if masks is not None:
            raise ValueError("pass masks or boxes, not both")
        masks = boxes_to_masks(boxes, tuple(fetch(data, [0]).shape[-2:]))
    if masks is not None:
        _check_masks(masks, count, data)
    preds = stream.probabilities.argmax(1)
    metrics = class_metrics(stream.labels, preds, classes, resamples=resamples, level=level, seed=seed)
    confidence = stream.probabilities.max(1)
    result_groups = None
    if group_values is not None:
        result_groups = group_metrics(
            stream.labels, preds, group_values, classes, resamples=resamples, level=level, seed=seed
        )
    audit = None
    if masks is not None:
        audit = cue_audit(
            model, lambda idx: fetch(data, idx.tolist()).float(), masks, stream.labels, preds, classes,
            groups=group_values, samples=audit_samples, resamples=resamples, level=level, seed=seed,
        )  # fmt: skip
    cells = None
    if cell_examples:
        fetcher = (lambda idx: fetch(data, idx)) if indexable(data) else None
        cells = cell_examples_of(selector, fetcher, stream.probabilities, stream.labels, stream.losses)
    params = {
        "batch_size": batch_size, "gallery": gallery, "order": order, "cell_examples": int(cell_examples),
        "audit_samples": audit_samples, "projection": projection, "max_points": max_points, "resamples": resamples,
        "level": level, "bins": bins, "seed": seed,
    }  # fmt: skip
    return Evaluation(
        names,
        metrics,
        most_confused(metrics.confusion),
        calibration(confidence, preds == stream.labels, bins),
        binary_curves(stream.probabilities[:, 1], stream.labels) if classes == 2 else None,
        result_groups,
        _gallery(model, data, stream, preds, gallery, order),
        _embedding(stream, preds, projection, seed),
        audit,
        count,
        description,
        params,
        library_versions(),
        cells,
        replace(coverage, items=count),
    )


def _gallery(model: nn.Module, data: Any, stream: Stream, preds: np.ndarray, count: int, order: Order) -> Gallery:
    """The ``count`` worst misclassified examples, with the Grad-CAM of their predicted class when spatial."""
    wrong = np.flatnonzero(preds != stream.labels)
    key = stream.losses[wrong] if order == "loss" else stream.probabilities[wrong].max(1)
    shown = wrong[np.argsort(-key, kind="stable")][:count]
    inputs = fetch(data, shown.tolist()).float() if len(shown) else torch.zeros(0)
    maps = None
    if len(shown) and inputs.ndim == 4 and _has_spatial_layer(model, inputs[:1]):
        explained = explain(model, inputs, "gradcam", target=preds[shown].tolist())
        maps = explained.normalized("minmax").cpu().numpy()
    rows = stream.probabilities[shown]
    return Gallery(
        order, shown, stream.labels[shown], preds[shown], rows[np.arange(len(shown)), stream.labels[shown]],
        rows[np.arange(len(shown)), preds[shown]], stream.losses[shown], inputs.cpu().numpy(), maps,
    )  # fmt: skip


def _has_spatial_layer(model: nn.Module, example: Tensor) -> bool:
    try:
        guess_spatial_layer(model, example.to(model_device(model)))
    except ValueError:  # no layer with a (N, C, H, W) output: the gallery shows the inputs without maps
        return False
    return True


def _embedding(stream: Stream, preds: np.ndarray, projection: Projection, seed: int) -> Embedding | None:
    features = stream.features
    if features is None or len(features) < 3:
        return None
    centred = features - features.mean(0)
    if projection == "umap":
        try:
            import umap
        except ImportError as err:
            raise ImportError("projection='umap' needs umap-learn: pip install 'deepscope[umap]'") from err
        points = umap.UMAP(n_components=2, random_state=seed).fit_transform(centred)
    else:
        if centred.shape[1] == 1:  # one feature: the map is a line
            centred = np.c_[centred, np.zeros(len(centred))]
        _, _, components = np.linalg.svd(centred, full_matrices=False)  # (D, D) principal axes
        points = centred @ components[:2].T  # (M, 2)
    index = stream.feature_index
    return Embedding(
        stream.feature_layer, projection, np.asarray(points, np.float32), index, stream.labels[index], preds[index]
    )


def _check_settings(gallery: int, order: str, projection: str, max_points: int, bins: int, cells: Any) -> None:
    if gallery < 0:
        raise ValueError(f"gallery must be >= 0 examples, got {gallery}")
    if isinstance(cells, bool) or not isinstance(cells, (int, np.integer)) or cells < 0:
        raise ValueError(f"cell_examples must be an integer >= 0 (examples kept per confusion cell), got {cells!r}")
    if order not in ("loss", "confidence"):
        raise ValueError(f"order must be 'loss' or 'confidence', got {order!r}")
    if projection not in ("pca", "umap"):
        raise ValueError(f"projection must be 'pca' or 'umap', got {projection!r}")
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")


def _class_names(class_names: Sequence[str] | None, classes: int) -> tuple[str, ...]:
    if class_names is None:
        return tuple(str(c) for c in range(classes))
    names = tuple(str(n) for n in class_names)
    if len(names) != classes:
        raise ValueError(f"{len(names)} class names for a model with {classes} outputs: pass one name per class")
    return names


def _check_labels(labels: np.ndarray, classes: int, names: tuple[str, ...]) -> None:
    bad = labels[(labels < 0) | (labels >= classes)]
    if len(bad):
        raise ValueError(
            f"label {int(bad[0])} is out of range: the model has {classes} classes ({', '.join(names[:10])}"
            f"{'…' if classes > 10 else ''}), so labels must be in [0, {classes - 1}]"
        )


def _check_groups(groups: Sequence[Any] | np.ndarray | None, count: int) -> np.ndarray | None:
    if groups is None:
        return None
    values = np.asarray([str(g) for g in groups])
    if len(values) != count:
        raise ValueError(f"groups has {len(values)} entries but there are {count} examples: pass one per example")
    return values


def _check_masks(masks: Tensor, count: int, data: Any) -> None:
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        raise ValueError(f"masks must be a (N, H, W) tensor, got {getattr(masks, 'shape', type(masks).__name__)}")
    if masks.shape[0] != count:
        raise ValueError(f"masks has {masks.shape[0]} entries but there are {count} examples: pass one per example")
    first = fetch(data, [0])
    if first.ndim != 4:
        raise ValueError(f"masks need image inputs (N, C, H, W); the inputs are {tuple(first.shape[1:])} per example")
    size = tuple(first.shape[-2:])
    if tuple(masks.shape[-2:]) != size:
        raise ValueError(f"masks are {tuple(masks.shape[-2:])} but the inputs are {size} pixels: they must match")
