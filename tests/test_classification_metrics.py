"""Classification metrics, bootstrap intervals, calibration and group metrics against sklearn and fairlearn."""

import warnings
from functools import partial

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame
from sklearn import metrics as skm

from deepscope import _classification_metrics as cm
from deepscope._classification_metrics import (
    Interval,
    binary_curves,
    calibration,
    class_metrics,
    confusion_matrix,
    group_metrics,
    most_confused,
)


def _rng(seed=0):
    return np.random.Generator(np.random.PCG64(seed))


def _predictions(classes, n=400, seed=0, accuracy=0.6):
    rng = _rng(seed)
    labels = rng.integers(0, classes, n)
    preds = np.where(rng.random(n) < accuracy, labels, rng.integers(0, classes, n))
    return labels, preds


def _seven_classes():
    """K=7 with class 5 never predicted and class 6 absent from the labels (but predicted)."""
    labels, preds = _predictions(7, seed=3)
    labels = np.where(labels == 6, 0, labels)
    preds = np.where(preds == 5, 1, preds)
    return labels, preds, 7


def _nine_classes():
    """K=9 with class 8 neither present nor predicted, and class 0 present but never hit."""
    labels, preds = _predictions(8, seed=4)
    preds = np.where(preds == 0, 1, preds)
    return labels, preds, 9


CASES = {
    "K=2": lambda: (*_predictions(2, seed=1), 2),
    "K=3": lambda: (*_predictions(3, seed=2, accuracy=0.4), 3),
    "K=7 unpredicted and absent": _seven_classes,
    "K=9 unused class": _nine_classes,
}


def _specificity(labels, preds, classes):
    (tn, fp), _ = np.moveaxis(skm.multilabel_confusion_matrix(labels, preds, labels=range(classes)), 0, -1)
    with np.errstate(invalid="ignore"):
        return np.where(tn + fp > 0, tn / (tn + fp), np.nan)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_point_estimates_match_sklearn(case):
    labels, preds, classes = case()
    result = class_metrics(labels, preds, classes, resamples=50)
    every = list(range(classes))
    per_class = partial(skm.precision_recall_fscore_support, labels=every, average=None, zero_division=np.nan)
    precision, recall, f1, support = per_class(labels, preds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        balanced = skm.balanced_accuracy_score(labels, preds)
    expected_confusion = skm.confusion_matrix(labels, preds, labels=every)
    np.testing.assert_array_equal(confusion_matrix(labels, preds, classes), expected_confusion)
    np.testing.assert_array_equal(result.confusion, expected_confusion)
    assert result.confusion.dtype == np.int64 and result.support.dtype == np.int64
    np.testing.assert_array_equal(result.support, support)
    assert result.accuracy.value == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert result.balanced_accuracy.value == pytest.approx(balanced, abs=1e-12)
    assert result.majority_baseline == pytest.approx(np.bincount(labels).max() / len(labels))
    for name, expected in {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "specificity": _specificity(labels, preds, classes),
    }.items():
        np.testing.assert_allclose(getattr(result, name).value, expected, rtol=0, atol=1e-12, equal_nan=True)
        assert getattr(result, name).low.shape == (classes,), name


def test_undefined_ratios_are_nan_not_zero():
    labels, preds, classes = _seven_classes()
    result = class_metrics(labels, preds, classes, resamples=100)
    assert np.isnan(result.precision.value[5]) and np.isnan(result.precision.low[5])
    assert np.isnan(result.recall.value[6]) and np.isnan(result.recall.high[6])
    assert result.f1.value[5] == 0 and result.f1.value[6] == 0  # present-but-missed / predicted-but-absent: real 0s
    unused = class_metrics(*_nine_classes(), resamples=0)
    assert np.isnan(unused.f1.value[8]) and np.isnan(unused.precision.value[8])
    assert unused.recall.value[0] == 0 and unused.f1.value[0] == 0


def test_intervals_bracket_the_estimate_and_are_reproducible():
    labels, preds = _predictions(4, n=1000)
    result = class_metrics(labels, preds, 4, resamples=300, level=0.9, seed=7)
    assert (result.level, result.resamples) == (0.9, 300)
    assert isinstance(result.accuracy.value, float) and isinstance(result.accuracy.low, float)
    assert result.accuracy.low < result.accuracy.value < result.accuracy.high
    assert result.balanced_accuracy.low < result.balanced_accuracy.value < result.balanced_accuracy.high
    for interval in (result.precision, result.recall, result.specificity, result.f1):
        assert np.all(interval.low < interval.value) and np.all(interval.value < interval.high)
    again = class_metrics(labels, preds, 4, resamples=300, level=0.9, seed=7)
    assert again.accuracy == result.accuracy
    other = class_metrics(labels, preds, 4, resamples=300, level=0.9, seed=8)
    assert other.accuracy.low != result.accuracy.low
    wider = class_metrics(labels, preds, 4, resamples=300, level=0.99, seed=7)
    assert wider.accuracy.low < result.accuracy.low and wider.accuracy.high > result.accuracy.high


def test_no_resamples_gives_nan_intervals():
    labels, preds = _predictions(3)
    result = class_metrics(labels, preds, 3, resamples=0)
    assert np.isnan(result.accuracy.low) and np.isnan(result.accuracy.high) and not np.isnan(result.accuracy.value)
    assert result.recall.low.shape == (3,) and np.isnan(result.recall.low).all() and np.isnan(result.recall.high).all()


def test_chunked_resampling_agrees_with_one_block(monkeypatch):
    labels, preds = _predictions(3, n=500)
    whole = class_metrics(labels, preds, 3, resamples=2000)
    monkeypatch.setattr(cm, "_CHUNK_ELEMENTS", 1700)  # 3 resamples per block
    chunked = class_metrics(labels, preds, 3, resamples=2000)
    assert chunked.accuracy.value == whole.accuracy.value
    assert chunked.accuracy.low == pytest.approx(whole.accuracy.low, abs=0.01)
    assert chunked.accuracy.high == pytest.approx(whole.accuracy.high, abs=0.01)
    np.testing.assert_allclose(chunked.recall.low, whole.recall.low, atol=0.02)


def test_bootstrap_interval_covers_the_true_accuracy():
    rng = _rng(11)
    truth, datasets, covered = 0.8, 300, 0
    for seed in range(datasets):
        labels = rng.integers(0, 2, 200)
        preds = np.where(rng.random(200) < truth, labels, 1 - labels)
        accuracy = class_metrics(labels, preds, 2, resamples=500, seed=seed).accuracy
        covered += accuracy.low <= truth <= accuracy.high
    assert 0.90 <= covered / datasets <= 0.99


def _group_data():
    rng = _rng(5)
    groups = np.array(["north"] * 300 + ["east"] * 150 + ["south"] * 60 + ["west"] * 40)
    labels = rng.integers(0, 4, len(groups))
    labels[groups == "west"] = rng.integers(0, 3, 40)  # class 3 absent from "west"
    accuracy = {"north": 0.8, "east": 0.6, "south": 0.5, "west": 0.7}
    hit = rng.random(len(groups)) < np.vectorize(accuracy.get)(groups)
    preds = np.where(hit, labels, rng.integers(0, 4, len(groups)))
    return labels, preds, groups


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")
def test_group_metrics_match_fairlearn():
    labels, preds, groups = _group_data()
    recalls = {
        f"recall_{k}": partial(skm.recall_score, labels=[k], average="macro", zero_division=np.nan) for k in range(4)
    }
    frame = MetricFrame(
        metrics={"accuracy": skm.accuracy_score, "balanced_accuracy": skm.balanced_accuracy_score, **recalls},
        y_true=labels,
        y_pred=preds,
        sensitive_features=groups,
    )
    result = group_metrics(labels, preds, groups, 4, resamples=200)
    by_group = frame.by_group
    assert result.names == list(by_group.index) == ["east", "north", "south", "west"]
    np.testing.assert_array_equal(result.counts, [150, 300, 60, 40])
    np.testing.assert_allclose(result.accuracy.value, by_group["accuracy"], atol=1e-12)
    np.testing.assert_allclose(result.balanced_accuracy.value, by_group["balanced_accuracy"], atol=1e-12)
    expected_recall = by_group[list(recalls)].to_numpy(dtype=float)
    np.testing.assert_allclose(result.recall.value, expected_recall, atol=1e-12, equal_nan=True)
    assert np.isnan(result.recall.value[3, 3]) and np.isnan(result.recall.low[3, 3])
    assert result.largest_gap == pytest.approx(frame.difference(method="between_groups")["accuracy"], abs=1e-12)
    np.testing.assert_allclose(result.accuracy_gap, by_group["accuracy"].max() - by_group["accuracy"], atol=1e-12)
    best = by_group["balanced_accuracy"].max()
    np.testing.assert_allclose(result.balanced_accuracy_gap, best - by_group["balanced_accuracy"], atol=1e-12)
    assert result.accuracy_gap.min() == 0 and result.accuracy_gap.max() == result.largest_gap
    for g, name in enumerate(result.names):
        shares = np.bincount(preds[groups == name], minlength=4) / np.sum(groups == name)
        np.testing.assert_allclose(result.selection_rate[g], shares, atol=1e-12)
    assert result.accuracy.low.shape == (4,) and result.recall.high.shape == (4, 4)
    assert np.all(result.accuracy.low < result.accuracy.value) and np.all(result.accuracy.value < result.accuracy.high)


def test_group_bootstrap_stays_inside_each_group():
    labels = np.array([0, 1, 0, 1] * 25 + [0, 1] * 50)
    preds = labels.copy()
    preds[100::3] = 1 - preds[100::3]  # group 10: a third wrong, group 2 all right
    groups = np.array([2] * 100 + [10] * 100)
    result = group_metrics(labels, preds, groups, 2, resamples=200)
    assert result.names == ["2", "10"]  # sorted by value, not as text
    assert (result.accuracy.value[0], result.accuracy.low[0], result.accuracy.high[0]) == (1.0, 1.0, 1.0)
    assert result.accuracy.low[1] < result.accuracy.value[1] < result.accuracy.high[1] < 1


def test_group_metrics_without_resamples():
    labels, preds, groups = _group_data()
    result = group_metrics(labels, preds, list(groups), 4, resamples=0)
    assert np.isnan(result.accuracy.low).all() and np.isnan(result.recall.high).all()
    assert result.counts.dtype == np.int64


def test_calibration_of_a_calibrated_model():
    rng = _rng(2)
    confidence = rng.uniform(0.3, 1.0, 100_000)
    result = calibration(confidence, rng.random(100_000) < confidence)
    assert result.ece < 0.01
    assert result.edges.shape == (16,) and result.counts.sum() == 100_000 and result.counts.dtype == np.int64
    assert np.isnan(result.accuracy[0]) and np.isnan(result.confidence[0])  # no confidence below 0.3
    assert result.mce >= result.ece


def test_calibration_of_an_overconfident_model():
    rng = _rng(3)
    confidence = rng.uniform(0.3, 1.0, 100_000)
    result = calibration(confidence, rng.random(100_000) < confidence - 0.2, bins=10)
    assert result.ece == pytest.approx(0.2, abs=0.02)
    filled = result.counts > 0
    np.testing.assert_allclose(result.accuracy[filled], result.confidence[filled] - 0.2, atol=0.03)


def test_calibration_bins_are_closed_on_the_right():
    result = calibration(np.array([0.0, 0.2, 0.4, 0.6, 0.61, 1.0]), np.array([1, 0, 1, 1, 0, 1]), bins=5)
    np.testing.assert_array_equal(result.counts, [2, 1, 1, 1, 1])  # (0.4, 0.6] holds 0.6; 0 joins the first bin
    np.testing.assert_allclose(result.confidence, [0.1, 0.4, 0.6, 0.61, 1.0])
    np.testing.assert_allclose(result.accuracy, [0.5, 1.0, 1.0, 0.0, 1.0])
    errors = np.abs(result.accuracy - result.confidence)
    assert result.ece == pytest.approx(np.dot(result.counts, errors) / 6)
    assert result.mce == pytest.approx(errors.max())
    for bins in (3, 5, 6, 10, 12, 15):  # with np.linspace, 5 / 6 would land above its edge
        edges = [k / bins for k in range(1, bins + 1)]
        np.testing.assert_array_equal(calibration(np.array(edges), np.ones(bins, bool), bins).counts, np.ones(bins))


def test_most_confused_orders_by_count_then_rate_then_index():
    confusion = np.array([[4, 2, 2], [3, 2, 0], [0, 3, 9]])
    assert most_confused(confusion) == [(1, 0, 3, 0.6), (2, 1, 3, 0.25), (0, 1, 2, 0.25), (0, 2, 2, 0.25)]
    assert most_confused(confusion, top=2) == [(1, 0, 3, 0.6), (2, 1, 3, 0.25)]
    assert most_confused(np.diag([3, 4])) == []


def test_binary_curves_match_sklearn():
    rng = _rng(9)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(0.3 * labels + rng.random(300) * 0.7, 0, 1)
    result = binary_curves(scores, labels)
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    np.testing.assert_array_equal(result.fpr, fpr)
    np.testing.assert_array_equal(result.tpr, tpr)
    np.testing.assert_array_equal(result.precision, precision)
    np.testing.assert_array_equal(result.recall, recall)
    assert result.roc_auc == pytest.approx(skm.roc_auc_score(labels, scores)) and 0.5 < result.roc_auc < 1
    assert result.average_precision == pytest.approx(skm.average_precision_score(labels, scores))


_Y = np.array([0, 1, 2, 1, 0, 2, 1, 0, 1, 2])

BAD_INPUTS = {
    "labels 2-D": (lambda: class_metrics(_Y.reshape(2, 5), _Y.reshape(2, 5), 3), r"labels must be a 1-D array"),
    "float labels": (lambda: class_metrics(_Y.astype(float), _Y, 3), r"labels must hold integer.*float64"),
    "bool preds": (lambda: confusion_matrix(_Y, _Y > 0, 3), r"preds must hold integer"),
    "lengths": (lambda: class_metrics(_Y, _Y[:9], 3), r"one entry per example, got 10 and 9"),
    "label too big": (lambda: class_metrics(_Y, _Y, 2), r"labels must lie in \[0, classes\) = \[0, 2\), found 2"),
    "negative pred": (lambda: confusion_matrix(_Y, _Y - 1, 3), r"preds must lie in .*found -1"),
    "empty": (lambda: class_metrics(np.array([], int), np.array([], int), 3), r"no examples"),
    "empty list": (lambda: confusion_matrix([], [], 3), r"no examples"),
    "one class": (lambda: class_metrics(_Y * 0, _Y * 0, 1), r"classes must be an integer of at least 2, got 1"),
    "level percent": (lambda: class_metrics(_Y, _Y, 3, level=95), r"level must lie strictly between 0 and 1.*95"),
    "level one": (lambda: group_metrics(_Y, _Y, _Y, 3, level=1.0), r"level must lie strictly between 0 and 1"),
    "negative resamples": (lambda: class_metrics(_Y, _Y, 3, resamples=-1), r"resamples must be a non-negative"),
    "groups length": (lambda: group_metrics(_Y, _Y, _Y[:9], 3), r"groups has 9 entries but there are 10 examples"),
    "groups 2-D": (lambda: group_metrics(_Y, _Y, _Y.reshape(5, 2), 3), r"groups must be 1-D"),
    "no bins": (lambda: calibration(np.full(3, 0.5), np.ones(3, bool), bins=0), r"bins must be .* at least 1, got 0"),
    "confidence above 1": (lambda: calibration(np.array([0.5, 1.2]), np.ones(2, bool)), r"\[0, 1\].*found 1\.2"),
    "confidence NaN": (lambda: calibration(np.array([np.nan, 0.2]), np.ones(2, bool)), r"\[0, 1\].*found nan"),
    "confidence negative": (lambda: calibration(np.array([-0.1]), np.ones(1, bool)), r"\[0, 1\].*found -0\.1"),
    "correct not 0/1": (lambda: calibration(np.array([0.5, 0.4]), np.array([2, 0])), r"correct must be bool"),
    "calibration lengths": (lambda: calibration(np.full(3, 0.5), np.ones(2, bool)), r"got 3 and 2"),
    "calibration empty": (lambda: calibration(np.array([]), np.array([], bool)), r"no examples"),
    "binary labels": (lambda: binary_curves(np.full(10, 0.5), _Y), r"labels must be 0 or 1"),
    "binary one class": (lambda: binary_curves(np.full(3, 0.5), np.ones(3, int)), r"both classes 0 and 1"),
    "binary lengths": (lambda: binary_curves(np.full(3, 0.5), np.array([0, 1])), r"one entry per example"),
    "binary NaN score": (lambda: binary_curves(np.array([np.nan, 0.5]), np.array([0, 1])), r"scores must be finite"),
    "not square": (lambda: most_confused(np.ones((2, 3))), r"square \(K, K\) matrix, got shape \(2, 3\)"),
    "negative top": (lambda: most_confused(np.eye(2), top=-1), r"top must be a non-negative"),
}


@pytest.mark.parametrize("call, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_explain_themselves(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_interval_is_a_frozen_value():
    interval = Interval(0.5, 0.4, 0.6)
    with pytest.raises(AttributeError):
        interval.value = 1.0  # type: ignore[misc]
