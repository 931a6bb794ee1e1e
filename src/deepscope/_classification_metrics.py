"""Classification metrics from integer labels and predictions, with bootstrap intervals, calibration and groups.

This is the arithmetic behind ``deepscope.evaluate()``: it sees only numpy arrays of class indices (and, for
calibration and binary curves, confidences), so it needs neither torch nor a plotting library.

Every metric is a function of the ``(K, K)`` confusion matrix, so the bootstrap resamples the examples, builds the
confusion matrix of each resample with a single ``np.bincount`` over a whole block of resamples, and evaluates the
metrics on the ``(R, K, K)`` stack at once. Intervals are percentile intervals over the resamples. Group metrics
resample inside each group, so every resample keeps the group sizes of the data.

A ratio whose denominator is zero (the precision of a class never predicted, the recall of a class absent from
the labels) is NaN, not 0: it was not measured, and averaging it in as a zero would hide that. The resamples in
which a metric is undefined are left out of its interval.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BinaryCurves",
    "Calibration",
    "ClassMetrics",
    "GroupMetrics",
    "Interval",
    "binary_curves",
    "calibration",
    "class_metrics",
    "confusion_matrix",
    "group_metrics",
    "most_confused",
]

_CHUNK_ELEMENTS = 1 << 21  # resampled example indices drawn at once: a few such int64 blocks stay near 50 MB


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate on the data with a bootstrap percentile interval around it.

    Attributes:
        value: the metric on the full data.
        low: the lower percentile over the resamples (NaN without resamples, or where no resample defines it).
        high: the upper percentile, same shape as ``value`` and ``low``.
    """

    value: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float


@dataclass(frozen=True, slots=True)
class ClassMetrics:
    """Overall and per-class metrics of one set of predictions.

    Attributes:
        confusion: ``(K, K)`` counts, rows the true class and columns the predicted class.
        accuracy: share of examples predicted correctly.
        balanced_accuracy: mean recall over the classes present in the labels.
        majority_baseline: share of the most frequent true class, the accuracy of always predicting it.
        precision: ``(K,)`` share of the predictions of each class that are right.
        recall: ``(K,)`` share of the examples of each class that are found (sensitivity).
        specificity: ``(K,)`` share of the examples of the other classes not predicted as this one.
        f1: ``(K,)`` harmonic mean of precision and recall, ``2 TP / (2 TP + FP + FN)``.
        support: ``(K,)`` number of examples of each true class.
        level: coverage of the intervals, e.g. 0.95.
        resamples: number of bootstrap resamples behind the intervals.
    """

    confusion: np.ndarray
    accuracy: Interval
    balanced_accuracy: Interval
    majority_baseline: float
    precision: Interval
    recall: Interval
    specificity: Interval
    f1: Interval
    support: np.ndarray
    level: float
    resamples: int


@dataclass(frozen=True, slots=True)
class Calibration:
    """How well confidence matches accuracy, in equal-width confidence bins (a reliability diagram).

    Attributes:
        edges: ``(bins + 1,)`` bin edges on [0, 1].
        confidence: ``(bins,)`` mean confidence in each bin, NaN for an empty bin.
        accuracy: ``(bins,)`` share of correct predictions in each bin, NaN for an empty bin.
        counts: ``(bins,)`` number of examples in each bin.
        ece: expected calibration error, the count-weighted mean of ``|accuracy - confidence|`` over the bins.
        mce: maximum calibration error, the largest ``|accuracy - confidence|`` over the non-empty bins.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray
    ece: float
    mce: float


@dataclass(frozen=True, slots=True)
class GroupMetrics:
    """Metrics inside each group of examples (e.g. a sensitive attribute), and the gaps between groups.

    Attributes:
        names: the distinct group values, in sorted order, as strings.
        counts: ``(G,)`` number of examples in each group.
        accuracy: ``(G,)`` accuracy inside each group.
        balanced_accuracy: ``(G,)`` balanced accuracy inside each group.
        recall: ``(G, K)`` recall of each class inside each group, NaN where the class is absent from the group.
        selection_rate: ``(G, K)`` share of each group predicted as each class.
        accuracy_gap: ``(G,)`` the best group's accuracy minus this group's, 0 for the best.
        balanced_accuracy_gap: ``(G,)`` the same for balanced accuracy.
        largest_gap: the best minus the worst group accuracy.
    """

    names: list[str]
    counts: np.ndarray
    accuracy: Interval
    balanced_accuracy: Interval
    recall: Interval
    selection_rate: np.ndarray
    accuracy_gap: np.ndarray
    balanced_accuracy_gap: np.ndarray
    largest_gap: float


@dataclass(frozen=True, slots=True)
class BinaryCurves:
    """ROC and precision-recall curves of a binary classifier's scores.

    Attributes:
        fpr: false positive rate at each threshold, increasing.
        tpr: true positive rate at each threshold.
        roc_auc: area under the ROC curve.
        precision: precision at each threshold (ends at 1).
        recall: recall at each threshold (ends at 0).
        average_precision: precision averaged over the recall steps, the area under the PR curve.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    roc_auc: float
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """Count the examples of each true class predicted as each class.

    Args:
        labels: ``(N,)`` true class indices in ``[0, classes)``.
        preds: ``(N,)`` predicted class indices in ``[0, classes)``.
        classes: number of classes ``K``.

    Returns:
        ``(K, K)`` int64 counts, rows the true class and columns the predicted class.

    Raises:
        ValueError: if the inputs are not two non-empty 1-D integer arrays of one length with values in range.
    """
    return _confusion(*_checked_predictions(labels, preds, classes), classes)


def class_metrics(
    labels: np.ndarray,
    preds: np.ndarray,
    classes: int,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> ClassMetrics:
    """Accuracy, balanced accuracy and per-class precision, recall, specificity and F1 with bootstrap intervals.

    Args:
        labels: ``(N,)`` true class indices in ``[0, classes)``.
        preds: ``(N,)`` predicted class indices in ``[0, classes)``.
        classes: number of classes ``K``.
        resamples: bootstrap resamples of the examples; 0 skips the bootstrap (intervals are NaN).
        level: coverage of the percentile intervals, in (0, 1).
        seed: seed of the resampling, so the intervals are reproducible.

    Returns:
        The metrics; undefined ratios (a class never predicted or absent) are NaN.

    Raises:
        ValueError: for malformed predictions, a ``level`` outside (0, 1) or a negative ``resamples``.
    """
    labels, preds = _checked_predictions(labels, preds, classes)
    _check_bootstrap(resamples, level)
    confusion = _confusion(labels, preds, classes)
    single_group = np.zeros(len(labels), dtype=np.int64)
    point = {name: values[0] for name, values in _metrics(confusion[None]).items()}  # drop the stack axis
    samples = _bootstrap(labels * classes + preds, single_group, (1, classes), resamples, seed)
    samples = {name: values[:, 0] for name, values in samples.items()}  # (R, 1, ...) -> (R, ...)
    intervals = {name: _interval(point[name], samples.get(name), level) for name in point}
    support = confusion.sum(axis=1)
    return ClassMetrics(
        confusion=confusion,
        accuracy=intervals["accuracy"],
        balanced_accuracy=intervals["balanced_accuracy"],
        majority_baseline=float(support.max() / len(labels)),
        precision=intervals["precision"],
        recall=intervals["recall"],
        specificity=intervals["specificity"],
        f1=intervals["f1"],
        support=support,
        level=float(level),
        resamples=int(resamples),
    )


def most_confused(confusion: np.ndarray, top: int = 10) -> list[tuple[int, int, int, float]]:
    """The most frequent mistakes: off-diagonal cells of a confusion matrix, largest count first.

    Args:
        confusion: ``(K, K)`` counts, rows the true class and columns the predicted class.
        top: the most pairs to return.

    Returns:
        ``(true, predicted, count, count / examples of true)`` for each cell with a positive count, ordered by
        count, then by rate (both descending), then by true and predicted class.

    Raises:
        ValueError: if ``confusion`` is not square or ``top`` is negative.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {confusion.shape}")
    if top < 0:
        raise ValueError(f"top must be a non-negative number of pairs, got {top}")
    mistakes = confusion.copy()
    np.fill_diagonal(mistakes, 0)
    true, predicted = np.nonzero(mistakes > 0)
    counts = confusion[true, predicted]
    rates = counts / confusion.sum(axis=1)[true]
    order = np.lexsort((predicted, true, -rates, -counts))[:top]  # the last key sorts first
    return [(int(true[i]), int(predicted[i]), int(counts[i]), float(rates[i])) for i in order]


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> Calibration:
    """Bin the examples by confidence and compare each bin's accuracy with its mean confidence.

    Bin ``b`` holds the confidences in ``(edges[b], edges[b + 1]]``; a confidence of exactly 0 goes to the first
    bin (the convention of Guo et al. 2017, "On Calibration of Modern Neural Networks").

    Args:
        confidence: ``(N,)`` confidence of each prediction in [0, 1], usually its largest softmax probability.
        correct: ``(N,)`` whether each prediction is right (bool, or 0 and 1).
        bins: number of equal-width bins on [0, 1].

    Returns:
        The per-bin statistics with the expected and maximum calibration errors.

    Raises:
        ValueError: if the inputs are empty, of different lengths, out of range, or ``bins`` is below 1.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an integer of at least 1, got {bins!r}")
    confidence, correct = _checked_confidence(confidence, correct)
    edges = np.arange(bins + 1) / bins  # k / bins rounded once, so a confidence written as k / bins is an edge
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (N,) right-closed bins
    counts = np.bincount(bin_of, minlength=bins)
    mean_confidence = _ratio(np.bincount(bin_of, weights=confidence, minlength=bins), counts)
    accuracy = _ratio(np.bincount(bin_of, weights=correct, minlength=bins), counts)
    filled = counts > 0
    errors = np.abs(accuracy[filled] - mean_confidence[filled])
    return Calibration(
        edges=edges,
        confidence=mean_confidence,
        accuracy=accuracy,
        counts=counts,
        ece=float(np.sum(counts[filled] / len(confidence) * errors)),
        mce=float(errors.max()),
    )


def group_metrics(
    labels: np.ndarray,
    preds: np.ndarray,
    groups: Sequence | np.ndarray,
    classes: int,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> GroupMetrics:
    """Accuracy, balanced accuracy and per-class recall inside each group, with intervals, and the gaps between.

    Args:
        labels: ``(N,)`` true class indices in ``[0, classes)``.
        preds: ``(N,)`` predicted class indices in ``[0, classes)``.
        groups: ``(N,)`` the group of each example, any sortable values (strings, integers, ...).
        classes: number of classes ``K``.
        resamples: bootstrap resamples, drawn inside each group; 0 skips the bootstrap (intervals are NaN).
        level: coverage of the percentile intervals, in (0, 1).
        seed: seed of the resampling, so the intervals are reproducible.

    Returns:
        One row per distinct group value, in sorted order.

    Raises:
        ValueError: for malformed predictions, ``groups`` not 1-D or of another length, a ``level`` outside
            (0, 1) or a negative ``resamples``.
    """
    labels, preds = _checked_predictions(labels, preds, classes)
    _check_bootstrap(resamples, level)
    values, group_index = _checked_groups(groups, len(labels))
    shape = (len(values), classes)
    cells = labels * classes + preds
    confusion = np.bincount(group_index * classes**2 + cells, minlength=shape[0] * classes**2)
    point = _metrics(confusion.reshape(shape[0], classes, classes))  # (G, ...) per group
    samples = _bootstrap(cells, group_index, shape, resamples, seed)
    reported = ("accuracy", "balanced_accuracy", "recall")
    intervals = {name: _interval(point[name], samples.get(name), level) for name in reported}
    accuracy, balanced = point["accuracy"], point["balanced_accuracy"]
    return GroupMetrics(
        names=[str(value) for value in values],
        counts=np.bincount(group_index, minlength=shape[0]),
        accuracy=intervals["accuracy"],
        balanced_accuracy=intervals["balanced_accuracy"],
        recall=intervals["recall"],
        selection_rate=point["selection_rate"],
        accuracy_gap=accuracy.max() - accuracy,
        balanced_accuracy_gap=balanced.max() - balanced,
        largest_gap=float(accuracy.max() - accuracy.min()),
    )


def binary_curves(scores: np.ndarray, labels: np.ndarray) -> BinaryCurves:
    """ROC and precision-recall curves with their areas, for a two-class problem.

    Args:
        scores: ``(N,)`` score of class 1 for each example, usually its probability.
        labels: ``(N,)`` true classes, 0 or 1, with both present.

    Returns:
        The curves (one point per distinct score) and their summaries.

    Raises:
        ValueError: if the inputs are empty, of different lengths, the scores not finite numbers, or the labels
            not all 0 or 1, or a class missing.
    """
    from sklearn import metrics  # loaded on demand: only binary problems draw these curves

    scores, labels = _checked_scores(scores, labels)
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    return BinaryCurves(
        fpr=fpr,
        tpr=tpr,
        roc_auc=float(metrics.roc_auc_score(labels, scores)),
        precision=precision,
        recall=recall,
        average_precision=float(metrics.average_precision_score(labels, scores)),
    )


def _confusion(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """``(K, K)`` counts of checked labels (rows) against predictions (columns)."""
    return np.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def _metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of a stack of confusion matrices ``(..., K, K)``: overall ones ``(...)``, per class ``(..., K)``."""
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)  # (..., K) true positives
    actual = confusion.sum(axis=-1)  # (..., K) support: TP + FN
    predicted = confusion.sum(axis=-2)  # (..., K) TP + FP
    total = actual.sum(axis=-1)  # (...)
    negatives = total[..., None] - actual  # (..., K) TN + FP
    recall = _ratio(hits, actual)
    present = actual > 0
    return {
        "accuracy": _ratio(hits.sum(axis=-1), total),
        "balanced_accuracy": _ratio(np.where(present, recall, 0.0).sum(axis=-1), present.sum(axis=-1)),
        "precision": _ratio(hits, predicted),
        "recall": recall,
        "specificity": _ratio(negatives - (predicted - hits), negatives),
        "f1": _ratio(2 * hits, actual + predicted),
        "selection_rate": _ratio(predicted, total[..., None]),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator``, NaN where the denominator is 0: undefined, not zero."""
    numerator, denominator = np.broadcast_arrays(numerator, denominator)
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0)


def _bootstrap(
    cells: np.ndarray, group_index: np.ndarray, shape: tuple[int, int], resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """Every metric on each of ``resamples`` resamplings drawn inside each group: ``(R, G, ...)`` per metric.

    Args:
        cells: ``(N,)`` confusion cell of each example, ``label * K + prediction``.
        group_index: ``(N,)`` group of each example in ``[0, G)``.
        shape: ``(G, K)``, the numbers of groups and classes.
        resamples: number of resamples ``R``; 0 gives an empty dict.
        seed: seed of the ``PCG64`` generator.
    """
    if resamples == 0:
        return {}
    parts: dict[str, list[np.ndarray]] = {}
    for confusion in _resampled_confusions(cells, group_index, shape, resamples, seed):
        for name, values in _metrics(confusion).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _resampled_confusions(
    cells: np.ndarray, group_index: np.ndarray, shape: tuple[int, int], resamples: int, seed: int
) -> Iterator[np.ndarray]:
    """Confusion matrices of resamples with replacement inside each group, ``(chunk, G, K, K)`` blocks at a time."""
    groups, classes = shape
    cells_per_resample = groups * classes * classes
    order = np.argsort(group_index, kind="stable")
    flat_cells = group_index[order] * classes**2 + cells[order]  # (N,) cell in the (G, K, K) block, group-sorted
    sizes = np.bincount(group_index, minlength=groups)
    starts = np.cumsum(sizes) - sizes
    chunk = max(1, _CHUNK_ELEMENTS // max(len(cells), cells_per_resample))
    rng = np.random.Generator(np.random.PCG64(seed))
    for first in range(0, resamples, chunk):
        count = min(chunk, resamples - first)
        picks = np.empty((count, len(cells)), dtype=np.int64)  # (count, N) sorted positions drawn per group
        for start, size in zip(starts, sizes, strict=True):
            picks[:, start : start + size] = start + rng.integers(0, size, size=(count, size), dtype=np.int32)
        codes = flat_cells[picks]
        codes += np.arange(count)[:, None] * cells_per_resample  # each resample counts into its own block
        counts = np.bincount(codes.ravel(), minlength=count * cells_per_resample)
        yield counts.reshape(count, groups, classes, classes)


def _interval(value: np.ndarray, samples: np.ndarray | None, level: float) -> Interval:
    """The point estimate with the percentile interval of its resampled values ``(R, ...)`` (NaN without any)."""
    if samples is None:
        low = high = np.full(np.shape(value), np.nan)
    else:
        low, high = _percentiles(samples, level)
    if np.ndim(value) == 0:
        return Interval(float(value), float(low), float(high))
    return Interval(value, low, high)


def _percentiles(samples: np.ndarray, level: float) -> np.ndarray:
    """``(2, ...)`` lower and upper percentiles over axis 0, ignoring NaN; NaN where every resample is NaN."""
    flat = samples.reshape(len(samples), -1)  # (R, M)
    defined = ~np.isnan(flat).all(axis=0)
    bounds = np.full((2, flat.shape[1]), np.nan)
    tail = 50.0 * (1.0 - level)
    if defined.any():
        bounds[:, defined] = np.nanpercentile(flat[:, defined], [tail, 100.0 - tail], axis=0)
    return bounds.reshape(2, *samples.shape[1:])


def _checked_predictions(labels: np.ndarray, preds: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions as int64 arrays, after checking that they describe one classification."""
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise ValueError(f"classes must be an integer of at least 2, got {classes!r}")
    labels, preds = _class_indices(labels, "labels", classes), _class_indices(preds, "preds", classes)
    if len(labels) != len(preds):
        raise ValueError(f"labels and preds must have one entry per example, got {len(labels)} and {len(preds)}")
    return labels, preds


def _class_indices(values: np.ndarray, name: str, classes: int) -> np.ndarray:
    """``values`` as a non-empty 1-D int64 array of class indices in ``[0, classes)``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array with one class index per example, got shape {values.shape}")
    if values.size == 0:
        raise ValueError(f"no examples: {name} is empty")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {values.dtype}")
    low, high = values.min(), values.max()
    if low < 0 or high >= classes:
        outside = low if low < 0 else high
        raise ValueError(f"{name} must lie in [0, classes) = [0, {classes}), found {outside}")
    return values.astype(np.int64)


def _check_bootstrap(resamples: int, level: float) -> None:
    """Raise if ``resamples`` is not a non-negative integer or ``level`` not strictly between 0 and 1."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 0:
        raise ValueError(f"resamples must be a non-negative integer (0 skips the bootstrap), got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, e.g. 0.95 for 95% intervals, got {level!r}")


def _checked_groups(groups: Sequence | np.ndarray, examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct group values ``(G,)`` and each example's position among them ``(N,)``."""
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D with one group value per example, got shape {groups.shape}")
    if len(groups) != examples:
        raise ValueError(f"groups has {len(groups)} entries but there are {examples} examples")
    values, group_index = np.unique(groups, return_inverse=True)
    return values, group_index.astype(np.int64)


def _checked_confidence(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidences as float64 in [0, 1] and correctness as bool, after checking lengths and ranges."""
    confidence, correct = np.asarray(confidence), np.asarray(correct)
    if confidence.ndim != 1 or correct.ndim != 1:
        raise ValueError(
            f"confidence and correct must be 1-D, one entry per example, got shapes {confidence.shape} and "
            f"{correct.shape}"
        )
    if len(confidence) != len(correct):
        raise ValueError(
            f"confidence and correct must have one entry per example, got {len(confidence)} and {len(correct)}"
        )
    if len(confidence) == 0:
        raise ValueError("no examples: confidence and correct are empty")
    if not np.issubdtype(confidence.dtype, np.number) or np.issubdtype(confidence.dtype, np.complexfloating):
        raise ValueError(f"confidence must hold real numbers in [0, 1], got dtype {confidence.dtype}")
    confidence = confidence.astype(np.float64)
    outside = confidence[~((confidence >= 0.0) & (confidence <= 1.0))]  # NaN fails both comparisons
    if outside.size:
        raise ValueError(f"confidence must lie in [0, 1] (e.g. the largest softmax probability), found {outside[0]}")
    if correct.dtype != np.bool_ and not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must be bool (or 0 and 1): whether each prediction is right")
    return confidence, correct.astype(bool)


def _checked_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as finite float64 and labels as int64 0 or 1 with both classes present."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1 or len(scores) != len(labels):
        raise ValueError(
            f"scores and labels must be 1-D with one entry per example, got shapes {scores.shape} and {labels.shape}"
        )
    if len(scores) == 0:
        raise ValueError("no examples: scores and labels are empty")
    if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype, np.integer):
        raise ValueError(f"scores must be real numbers (the probability of class 1), got dtype {scores.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite: the probability (or score) of class 1 for each example")
    if not np.issubdtype(labels.dtype, np.integer) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1 for a binary problem, found {np.unique(labels)[:5]}")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"labels must contain both classes 0 and 1 to draw ROC and PR curves, found only {labels[0]}")
    return scores.astype(np.float64), labels.astype(np.int64)
