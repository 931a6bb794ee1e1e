"""The spurious-cue audit: does the model look at the object, or at its context?

Seed 000 §1 (a cat classifier that looks at the background) and seed 003 (the portable X-ray
scanner): a model can score well by reading a cue that travels with the label in the training data.
Where object masks are known, the share of the positive Grad-CAM energy of the *predicted* class
that falls inside the object (:func:`deepscope.attribution.metrics.energy_in_mask`) says where the
decision comes from. Averaged per true class and per group, with bootstrap intervals, a class is
flagged as relying mostly on context when both

- less than ``max_share`` (default one half) of its attribution falls on the object, and
- the object gets less than ``min_concentration`` (default 1.5) times the share a uniform map would
  give it (its area): a blurry but object-centred map of a small object is not flagged.

The audit runs on a class-stratified sample of the data (``samples`` examples), one backward pass
per batch of them; the rest of :func:`deepscope.evaluate` never needs gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from deepscope._classification_metrics import Interval
from deepscope.attribution import explain
from deepscope.attribution.metrics import energy_in_mask

__all__ = ["CueAudit", "cue_audit"]

_EXAMPLES_PER_CLASS = 4  # audited examples shown for each flagged class, the most context-driven first


@dataclass(frozen=True, slots=True)
class CueAudit:
    """Where the model's attribution falls relative to the objects, per example, class and group.

    Attributes:
        method: the attribution method (``"gradcam"``).
        indices: ``(M,)`` dataset positions of the audited examples.
        inside: ``(M,)`` share of the positive attribution inside the object (NaN: no positive value).
        area: ``(M,)`` share of the image the object covers.
        labels: ``(M,)`` true classes; ``preds``: ``(M,)`` predicted classes (the explained ones).
        per_class: ``(K,)`` mean ``inside`` per true class with bootstrap intervals (NaN: class not audited).
        class_area: ``(K,)`` mean object area per true class.
        group_names: the groups' names, or ``[]`` without groups.
        per_group: ``(G,)`` mean ``inside`` per group, or None without groups.
        flagged: the classes judged to rely mostly on context (see the module docstring).
        examples: for each flagged class, up to four audited positions with the least attribution inside.
        example_inputs: ``(E, C, H, W)`` those examples (flagged classes in order), float32 on the CPU.
        example_maps: ``(E, H, W)`` their Grad-CAM of the predicted class, scaled to [0, 1] per example.
        max_share: a flagged class has less than this share of its attribution inside the object ...
        min_concentration: ... and less than this multiple of the object's area.
    """

    method: str
    indices: np.ndarray
    inside: np.ndarray
    area: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    per_class: Interval
    class_area: np.ndarray
    group_names: list[str]
    per_group: Interval | None
    flagged: list[int]
    examples: dict[int, list[int]]
    example_inputs: np.ndarray
    example_maps: np.ndarray
    max_share: float
    min_concentration: float


def cue_audit(
    model: nn.Module,
    fetch_inputs: Callable[[np.ndarray], Tensor],
    masks: Tensor,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: int,
    *,
    groups: np.ndarray | None = None,
    samples: int = 512,
    batch_size: int = 64,
    max_share: float = 0.5,
    min_concentration: float = 1.5,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> CueAudit:
    """Audit a class-stratified sample of at most ``samples`` examples (see the module docstring).

    Args:
        model: the classifier (left unchanged: :func:`deepscope.explain` restores it).
        fetch_inputs: the inputs at some dataset positions, ``(M, C, H, W)``.
        masks: ``(N, H, W)`` object masks of the whole data (bool, or numbers where ``> 0.5`` is inside).
        labels: ``(N,)`` true classes.
        preds: ``(N,)`` predicted classes (each example's map explains its prediction).
        classes: number of classes ``K``.
        groups: ``(N,)`` group names (strings) or None.
        samples: examples audited, spread evenly over the true classes.
        batch_size: examples per attribution pass.
        max_share: see the module docstring.
        min_concentration: see the module docstring.
        resamples: bootstrap resamples of the per-class and per-group means.
        level: the intervals' coverage.
        seed: the sample and the bootstrap.
    """
    rng = np.random.default_rng(seed)
    chosen = _stratified(labels, classes, samples, rng)  # (M,) sorted positions
    region = masks[torch.as_tensor(chosen)].float() > 0.5  # (M, H, W)
    shares = []
    for start in range(0, len(chosen), batch_size):
        part = chosen[start : start + batch_size]
        maps = explain(model, fetch_inputs(part), "gradcam", target=preds[part].tolist())
        shares.append(energy_in_mask(maps, region[start : start + batch_size].to(maps.maps.device)).cpu().numpy())
    inside = np.concatenate(shares).astype(np.float64)  # (M,)
    area = region.flatten(1).double().mean(1).numpy()  # (M,)
    audited = labels[chosen]
    per_class = _means(inside, audited, classes, resamples, level, rng)
    class_area = np.array([area[audited == c].mean() if (audited == c).any() else np.nan for c in range(classes)])
    flagged = [
        c
        for c in range(classes)
        if per_class.value[c] < max_share and per_class.value[c] < min_concentration * class_area[c]
    ]  # NaN (class not audited) compares False: never flagged
    examples = {c: _least_inside(chosen, inside, audited == c) for c in flagged}
    shown = np.array([i for c in flagged for i in examples[c]], dtype=np.int64)
    example_inputs = fetch_inputs(shown) if len(shown) else torch.zeros(0)
    example_maps = np.zeros((0, *masks.shape[-2:]), np.float32)
    if len(shown):
        explained = explain(model, example_inputs, "gradcam", target=preds[shown].tolist())
        example_maps = explained.normalized("minmax").cpu().numpy()
    group_names: list[str] = []
    per_group = None
    if groups is not None:
        group_names = sorted(set(groups[chosen].tolist()))
        codes = np.searchsorted(np.array(group_names), groups[chosen])
        per_group = _means(inside, codes, len(group_names), resamples, level, rng)
    return CueAudit(
        "gradcam", chosen, inside, area, audited, preds[chosen], per_class, class_area, group_names, per_group,
        flagged, examples, example_inputs.float().cpu().numpy(), example_maps, max_share, min_concentration,
    )  # fmt: skip


def _stratified(labels: np.ndarray, classes: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``samples`` positions, about as many of each true class (all of a class that has fewer)."""
    if samples < 1:
        raise ValueError(f"audit samples must be >= 1, got {samples}")
    per_class = -(-samples // classes)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(classes)]
    return np.sort(np.concatenate(picked))


def _means(
    values: np.ndarray, codes: np.ndarray, count: int, resamples: int, level: float, rng: np.random.Generator
) -> Interval:
    """Mean of ``values`` per code ``0..count-1`` (NaN values left out) with percentile bootstrap intervals."""
    value, low, high = (np.full(count, np.nan) for _ in range(3))
    tail = 50 * (1 - level)
    for code in range(count):
        members = values[(codes == code) & ~np.isnan(values)]
        if not len(members):
            continue
        value[code] = members.mean()
        if resamples:
            draws = members[rng.integers(0, len(members), (resamples, len(members)))].mean(1)  # (R,)
            low[code], high[code] = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, low, high)


def _least_inside(chosen: np.ndarray, inside: np.ndarray, members: np.ndarray) -> list[int]:
    order = np.argsort(np.where(members, np.nan_to_num(inside, nan=0.0), np.inf), kind="stable")
    return [int(chosen[i]) for i in order[: min(_EXAMPLES_PER_CLASS, int(members.sum()))]]
