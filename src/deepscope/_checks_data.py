"""Doctor checks on the data: class imbalance, samples shared between splits, labels the model keeps rejecting."""

from __future__ import annotations

import numpy as np

from deepscope._diagnosis import Finding, RunView, Thresholds, bars_plot, late, late_start, lines_plot, register
from deepscope._hashing import duplicates_across
from deepscope._tags import TAGS

__all__: list[str] = []  # the checks are reached through deepscope.diagnostics.CHECKS


@register("class_imbalance", "data")
def class_imbalance(run: RunView, limits: Thresholds) -> list[Finding]:
    """The largest class is several times as frequent as the smallest: accuracy alone misleads."""
    prior = run.prior
    present = prior[prior > 0] if prior is not None else None
    if present is None or len(present) < 2 or present.max() <= limits.imbalance_ratio * present.min():
        return []
    names = run.meta.get(TAGS.CLASS_NAMES) or [str(k) for k in range(len(prior))]
    majority = int(prior.argmax())
    evidence = {
        "class_shares": {str(names[k]): float(p) for k, p in enumerate(prior)},
        "majority_baseline": float(prior.max()),
        "largest_to_smallest": float(present.max() / present.min()),
    }
    return [
        Finding(
            "class_imbalance",
            "info",
            f"imbalanced classes: '{names[majority]}' is {prior.max():.1%} of the probe set "
            f"({len(prior)} classes): always answering it scores {prior.max():.1%}",
            evidence,
            (
                "judge the model by balanced accuracy and per-class sensitivity/specificity, not accuracy",
                "rebalance the training (class weights, resampling) if the minority classes matter",
            ),
            plot=bars_plot(
                "Class shares of the probe set",
                "share",
                [str(n) for n in names],
                prior.tolist(),
                references=[("uniform", 1 / len(prior))],
                x_label="class",
                y_limits=(0.0, 1.0),
            ),
        )
    ]


@register("leakage", "data")
def leakage(run: RunView, limits: Thresholds) -> list[Finding]:
    """Identical samples in two splits (content hashes), when the doctor is given the datasets."""
    if not run.datasets or len(run.datasets) < 2:
        return []
    shared = duplicates_across(run.datasets)
    if not shared:
        return []
    sizes = {name: len(items) for name, items in run.datasets.items()}
    parts = [f"{count} of {sizes[b]} {b} samples are in {a}" for (a, b), (count, _) in shared.items()]
    evidence = {
        "pairs": {f"{a}/{b}": {"shared": count, "examples": examples} for (a, b), (count, examples) in shared.items()},
        "sizes": sizes,
    }
    total = sum(count for count, _ in shared.values())
    return [
        Finding(
            "leakage",
            "error",
            "data leakage: " + "; ".join(parts),
            evidence,
            (
                "deduplicate before splitting (by content hash), then split once and save the split manifest",
                "recompute the validation metrics on the cleaned split: they are optimistic until then",
            ),
            plot=bars_plot(
                "Samples found in two splits",
                "samples",
                [f"{a} ∩ {b}" for a, b in shared],
                [count for count, _ in shared.values()],
                label=f"{total} shared",
                x_label="pair of splits",
            ),
        )
    ]


@register("label_noise", "data")
def label_noise(run: RunView, limits: Thresholds) -> list[Finding]:
    """Probe samples whose label the model confidently rejects at every snapshot of the second half."""
    if run.outputs is None or run.labels is None or run.outputs[1].shape[-1] < 2:
        return []
    steps, outputs = run.outputs  # (T, N, K) logits
    labels = run.labels
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    tail = late(np.moveaxis(probabilities, 0, -1), limits.late_fraction)  # (N, K, T late)
    if tail.shape[-1] < 2:
        return []
    own = tail[np.arange(len(labels)), labels]  # (N, T) probability of the given label
    others = tail.copy()
    others[np.arange(len(labels)), labels] = 0.0
    prefers_other = others.max(axis=1) > limits.noisy_preference  # another class, not merely unsure
    suspicious = np.flatnonzero(((own < limits.noisy_confidence) & prefers_other).all(axis=1))
    share = len(suspicious) / len(labels)
    if share <= limits.noisy_share:
        return []
    predicted = tail[:, :, -1].argmax(axis=1)
    evidence = {
        "suspicious": len(suspicious),
        "probe_size": len(labels),
        "share": share,
        "examples": [
            {"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i])} for i in suspicious[:20]
        ],
        "confirmed_by_cleanlab": _cleanlab_overlap(probabilities[-1], labels, suspicious),
    }
    counts = [
        float((tail[:, :, t][np.arange(len(labels)), labels] < limits.noisy_confidence).mean())
        for t in range(tail.shape[-1])
    ]
    return [
        Finding(
            "label_noise",
            "warning",
            f"suspicious labels: at every late snapshot the model gives {share:.1%} of the probe set under "
            f"{limits.noisy_confidence:.0%} to its label and over {limits.noisy_preference:.0%} to another class",
            evidence,
            (
                "review the listed samples' labels (probe indices in the evidence) and fix or drop the wrong ones",
                "on held-out data, confident errors also come from over-fitting: check the validation loss",
                "train with label smoothing or a noise-robust loss until the labels are cleaned",
            ),
            step_start=late_start(steps, limits.late_fraction),
            step_end=int(steps[-1]),
            plot=lines_plot(
                f"Share of probe labels given under {limits.noisy_confidence:.0%} probability",
                "share of the probe set",
                [("labels rejected", late(steps[None], limits.late_fraction)[0], np.array(counts))],
                references=[("threshold", limits.noisy_share)],
            ),
        )
    ]


def _cleanlab_overlap(probabilities: np.ndarray, labels: np.ndarray, suspicious: np.ndarray) -> float | None:
    """Share of the suspicious samples that cleanlab's confident learning flags too (None without cleanlab)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    try:
        # one process: a probe set is small (4-10x faster than cleanlab's pool), and forking a process that runs
        # threads (torch's, a run writer's) can deadlock the child
        issues = find_label_issues(labels, probabilities, n_jobs=1)
    except (ValueError, IndexError):  # e.g. a class absent from the probe set
        return None
    return float(np.mean(issues[suspicious])) if len(suspicious) else None
