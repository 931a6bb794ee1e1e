"""Doctor checks on the curves of a run: the loss and the accuracy against the baseline that matters."""

from __future__ import annotations

import math

import numpy as np

from deepscope._diagnosis import Finding, RunView, Thresholds, lines_plot, nanmedian, register, smooth
from deepscope._tags import TAGS

__all__: list[str] = []  # the checks are reached through deepscope.diagnostics.CHECKS


def _loss_plot(title: str, steps: np.ndarray, values: np.ndarray, **kwargs: object) -> object:
    return lines_plot(
        title, "training loss", [("loss", steps, values), ("running median", steps, smooth(values))], **kwargs
    )  # type: ignore[arg-type]


@register("non_finite", "implementation")
def non_finite(run: RunView, limits: Thresholds) -> list[Finding]:
    """The loss or a layer statistic became NaN or infinite: the numbers left the range of floats."""
    if run.loss is None:
        return []
    steps, values = run.loss
    bad = ~np.isfinite(values)
    health_step = run.meta.get(TAGS.HEALTH_NONFINITE)
    if not bad.any() and health_step is None:
        return []
    first = int(steps[bad][0]) if bad.any() else int(health_step)
    finite = values[np.isfinite(values)]
    evidence = {
        "first_non_finite_step": first,
        "non_finite_losses": int(bad.sum()),
        "last_finite_loss": float(finite[-1]) if finite.size else math.nan,
        "first_non_finite_layer_statistic_step": health_step,
    }
    return [
        Finding(
            "non_finite",
            "error",
            f"the loss or the layers became NaN/inf from step {first} on",
            evidence,
            (
                "lower the learning rate (by 10×) or clip the gradients (torch.nn.utils.clip_grad_norm_)",
                "look for a division by zero, log(0) or exp overflow in the model or the loss "
                "(torch.autograd.set_detect_anomaly(True) names the operation)",
                "with mixed precision, use a gradient scaler",
            ),
            step_start=first,
            step_end=int(steps[-1]),
            plot=_loss_plot("Loss (non-finite values are gaps)", steps, values, span=(first, int(steps[-1]))),
        )
    ]


@register("initial_loss", "implementation")
def initial_loss(run: RunView, limits: Thresholds) -> list[Finding]:
    """The first loss of a classifier is far from ln K, what near-uniform initial predictions score.

    Far above (a warning): over-confident initial logits. Far below the prior's entropy, the best a
    model that knows nothing about the inputs can do (an info): a pretrained model — or the labels
    leaking into the inputs.
    """
    if run.loss is None or run.classes is None or int(run.loss[0][0]) != 1:
        return []  # no loss, not a classifier, or a resumed run that does not start at initialisation
    first = float(run.loss[1][0])
    chance = math.log(run.classes)
    prior = run.prior
    entropy = float(-(prior[prior > 0] * np.log(prior[prior > 0])).sum()) if prior is not None else chance
    high = first > limits.initial_loss_factor * chance and first - chance > 1.0
    low = first < entropy / limits.initial_loss_factor
    if not math.isfinite(first) or not (high or low):
        return []
    evidence = {"first_loss": first, "ln_K": chance, "prior_entropy": entropy, "classes": run.classes}
    steps, values = run.loss
    head = slice(0, max(20, len(values) // 10))
    if high:
        title = (
            f"the first loss is {first:.3g}, {first / chance:.1f}× the ln {run.classes} = {chance:.3g} "
            "of an untrained classifier"
        )
        actions = (
            "check the initialisation: default PyTorch init, or scale the last layer down (even to zero)",
            "check the inputs are normalised (mean 0, std 1) and the loss gets logits, not probabilities",
        )
    else:
        title = f"the first loss is {first:.3g}, far below the {entropy:.3g} of knowing only the class frequencies"
        actions = (
            "expected when fine-tuning a pretrained model; otherwise look for the labels leaking into the inputs",
        )
    return [
        Finding(
            "initial_loss",
            "warning" if high else "info",
            title,
            evidence,
            actions,
            step_start=1,
            step_end=int(steps[head][-1]),
            plot=lines_plot(
                "First steps of the loss",
                "training loss",
                [("loss", steps[head], values[head])],
                references=[
                    (f"ln {run.classes} (uniform predictions)", chance),
                    ("entropy of the class frequencies", entropy),
                ],
            ),
        )
    ]


@register("divergence", "learning rate")
def divergence(run: RunView, limits: Thresholds) -> list[Finding]:
    """The loss ran away: its running median ends far above its lowest value and above its start."""
    if run.loss is None or len(run.loss[1]) < 10:
        return []
    steps, values = run.loss
    smoothed = smooth(values)
    if not np.isfinite(smoothed).any():
        return []
    low = int(np.nanargmin(smoothed))
    end, best, start = float(smoothed[-1]), float(smoothed[low]), float(smoothed[0])
    if not (end > limits.divergence_factor * best and end > start):
        return []
    evidence = {"lowest_loss": best, "lowest_at_step": int(steps[low]), "final_loss": end, "initial_loss": start}
    return [
        Finding(
            "divergence",
            "error",
            f"the loss diverged: from {best:.3g} at step {int(steps[low])} up to {end:.3g}, "
            f"above its start ({start:.3g})",
            evidence,
            (
                "lower the learning rate by 3-10× (or use a warm-up then a decaying schedule)",
                "clip the gradient norm; check the loss of a single batch can be driven to ~0 (overfit one batch)",
            ),
            step_start=int(steps[low]),
            step_end=int(steps[-1]),
            plot=_loss_plot("Loss", steps, values, span=(int(steps[low]), int(steps[-1])), log_y=True),
        )
    ]


@register("loss_spikes", "learning rate")
def loss_spikes(run: RunView, limits: Thresholds) -> list[Finding]:
    """The loss jumps repeatedly far above the steps before it (and above its initial value)."""
    if run.loss is None or len(run.loss[1]) < 20:
        return []
    steps, values = run.loss
    window = max(5, len(values) // 50)
    before = np.array([nanmedian(values[max(0, i - window) : i]) for i in range(1, len(values))])
    spikes = 1 + np.flatnonzero((values[1:] > limits.spike_factor * before) & (values[1:] > values[0]))
    if len(spikes) < limits.min_spikes:
        return []
    evidence = {
        "spikes": len(spikes),
        "spike_steps": [int(s) for s in steps[spikes][:10]],
        "largest": float(np.nanmax(values[spikes])),
        "factor": limits.spike_factor,
    }
    return [
        Finding(
            "loss_spikes",
            "warning",
            f"{len(spikes)} loss spikes (over {limits.spike_factor:g}× the recent median and above the initial loss)",
            evidence,
            (
                "lower the learning rate (or its peak in a schedule), or clip the gradient norm",
                "look at the batches of the spike steps: corrupted or mislabelled samples produce the same pattern",
            ),
            step_start=int(steps[spikes[0]]),
            step_end=int(steps[spikes[-1]]),
            plot=_loss_plot("Loss with its spikes", steps, values, log_y=True),
        )
    ]


@register("plateau", "learning rate")
def plateau(run: RunView, limits: Thresholds) -> list[Finding]:
    """The loss barely moves over the first half of the run: learning too slowly, or not at all."""
    if run.loss is None or len(run.loss[1]) < 20:
        return []
    steps, values = run.loss
    smoothed = smooth(values)
    half = len(smoothed) // 2
    start = float(smoothed[0])
    drop = (start - float(np.nanmin(smoothed[: half + 1]))) / abs(start) if start else 0.0
    if not (math.isfinite(drop) and drop < limits.plateau_drop):
        return []
    evidence = {"initial_loss": start, "relative_drop_first_half": drop, "until_step": int(steps[half])}
    return [
        Finding(
            "plateau",
            "warning",
            f"the loss fell by only {drop:.1%} over the first half of the run (to step {int(steps[half])})",
            evidence,
            (
                "raise the learning rate (try 10×) or run a learning-rate range test",
                "check the gradients reach every layer (dead units, vanishing gradients) and that the labels "
                "match the inputs",
            ),
            step_start=int(steps[0]),
            step_end=int(steps[half]),
            plot=_loss_plot("Loss", steps, values, span=(int(steps[0]), int(steps[half]))),
        )
    ]


@register("overfitting", "regularisation")
def overfitting(run: RunView, limits: Thresholds) -> list[Finding]:
    """The validation loss rises while the training loss keeps falling; reports the step it starts."""
    validation, train = run.scalar(TAGS.EVAL_LOSS), run.loss
    if validation is None or train is None or len(validation[1]) < 3:
        return []
    v_steps, v_values = validation
    best = int(np.nanargmin(v_values))
    rise = (float(v_values[-1]) - float(v_values[best])) / abs(float(v_values[best]) or 1.0)
    t_steps, t_values = train
    t_smooth = smooth(t_values)
    at_best = float(np.interp(v_steps[best], t_steps, t_smooth))
    falling = float(t_smooth[-1]) < at_best
    if not (best < len(v_values) - 1 and rise > limits.overfit_rise and falling):
        return []
    start = int(v_steps[best])
    evidence = {
        "best_validation_loss": float(v_values[best]),
        "best_at_step": start,
        "final_validation_loss": float(v_values[-1]),
        "relative_rise": rise,
        "training_loss_at_best": at_best,
        "final_training_loss": float(t_smooth[-1]),
    }
    return [
        Finding(
            "overfitting",
            "warning",
            f"over-fitting from step {start}: validation loss up {rise:.0%} from its minimum while the "
            "training loss fell",
            evidence,
            (
                "get more training data, or augment it (flips, crops, noise)",
                f"stop around step {start} (early stopping) or keep the checkpoint with the best validation loss",
                "regularise: weight decay, dropout, a smaller network",
            ),
            step_start=start,
            step_end=int(v_steps[-1]),
            plot=lines_plot(
                "Training and validation loss",
                "loss",
                [("training (running median)", t_steps, t_smooth), ("validation", v_steps, v_values)],
                span=(start, int(v_steps[-1])),
            ),
        )
    ]


@register("underfitting", "capacity")
def underfitting(run: RunView, limits: Thresholds) -> list[Finding]:
    """The accuracy ends at or below the majority-class baseline: the model learnt (almost) nothing useful."""
    baseline = run.meta.get(TAGS.MAJORITY_BASELINE)
    tag = TAGS.ACCURACY if run.scalar(TAGS.ACCURACY) is not None else TAGS.TRAIN_METRIC.format(name="accuracy")
    accuracy = run.scalar(tag)
    if baseline is None or accuracy is None or not len(accuracy[1]):
        return []
    steps, values = accuracy
    final = float(values[-1])
    if final > baseline + limits.baseline_margin:
        return []
    below = final < baseline
    evidence = {
        "final_accuracy": final,
        "majority_baseline": float(baseline),
        "margin": limits.baseline_margin,
        "source": tag,
    }
    title = (
        f"accuracy {final:.1%} is below the {baseline:.1%} of always answering the majority class"
        if below
        else f"accuracy {final:.1%} is within {limits.baseline_margin:.0%} of the {baseline:.1%} of always answering "
        "the majority class"
    )
    return [
        Finding(
            "underfitting",
            "error" if below else "warning",
            title,
            evidence,
            (
                "check the implementation first: the inputs reach the model, labels match inputs, a single "
                "batch can be overfit",
                "increase the capacity: more layers or filters (and a larger input)",
                "train longer or with a higher learning rate; on imbalanced data judge by balanced accuracy "
                "and per-class recall",
            ),
            step_start=int(steps[0]),
            step_end=int(steps[-1]),
            plot=lines_plot(
                "Probe accuracy",
                "accuracy",
                [("accuracy", steps, values)],
                references=[("majority baseline", float(baseline))],
                y_limits=(0.0, 1.0),
                x_label="training step",
            ),
        )
    ]
