"""How far to trust an attribution map: faithfulness metrics.

- :func:`deletion_curve` and :func:`insertion_curve` (Petsiuk, Das & Saenko 2018, RISE, Sec. 4.1):
  pixels ordered by the map are removed from the image (deletion) or inserted into a blurred
  canvas (insertion) in equal chunks; the target class probability is recorded after each chunk
  and summarised by the area under the curve (:func:`auc`, trapezoid rule on ``[0, 1]``). A
  faithful map gives a low deletion AUC and a high insertion AUC. Every perturbed image of every
  sample is scored in batches under ``torch.inference_mode()``.
- :func:`pointing_game` (Zhang et al. 2016/2018, "Top-down Neural Attention by Excitation
  Backprop") and :func:`energy_in_mask` (the energy-based pointing game of Wang et al. 2020,
  Score-CAM) for maps whose object mask or bounding box is known.

The parameter-randomisation sanity check lives in :mod:`deepscope.attribution.sanity`.
Every function leaves the user's model and tensors unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.attribution._autograd import forward_scores
from deepscope.attribution._filters import gaussian_blur
from deepscope.attribution.base import check_inputs
from deepscope.attribution.perturbation import FixedClassScores, ScoreKind, check_images, fill_tensor
from deepscope.attribution.result import AttributionMap
from deepscope.guard import preserved
from deepscope.targets import as_target

__all__ = [
    "PerturbationCurve",
    "auc",
    "blur",
    "boxes_to_masks",
    "deletion_curve",
    "energy_in_mask",
    "insertion_curve",
    "pointing_game",
]

MapsLike = Tensor | AttributionMap
"""``(N, H, W)`` maps, ``(N, C, H, W)`` per-channel maps (summed over channels) or an :class:`AttributionMap`."""

CanvasSpec = float | str | Tensor
"""``"zeros"``, ``"blur"``, ``"mean"`` (each image's per-channel mean), a fill value or a broadcastable tensor."""


# --------------------------------------------------------------------------- deletion / insertion


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve for each sample.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``(K + 1,)`` share of pixels removed (deletion) or inserted (insertion), from 0 to 1.
        scores: ``(N, K + 1)`` target score of each sample after each step.
        score: ``"probability"`` or ``"logit"`` (ignored by custom target callables).
        target: the class scored for each sample, or a description of a custom target.
        baseline: what removed pixels become (deletion) or the starting canvas (insertion).
    """

    kind: Literal["deletion", "insertion"]
    fractions: Tensor
    scores: Tensor
    score: ScoreKind
    target: list[int] | str
    baseline: str

    @property
    def auc(self) -> Tensor:
        """``(N,)`` area under each curve (:func:`auc`): lower is better for deletion, higher for insertion."""
        return auc(self)


def auc(curve: PerturbationCurve | Tensor, fractions: Tensor | None = None) -> Tensor:
    """Area under curves by the trapezoid rule, on the fractions' range rescaled to ``[0, 1]``.

    Args:
        curve: a :class:`PerturbationCurve`, or scores ``(..., K + 1)``.
        fractions: the x positions ``(K + 1,)`` of raw scores; default ``K + 1`` equally spaced
            points on ``[0, 1]``. Ignored for a :class:`PerturbationCurve`.

    Returns:
        ``(...)`` areas, e.g. ``(N,)``.

    Example:
        >>> auc(torch.tensor([1.0, 0.5, 0.0]))  # a straight line from 1 to 0
        tensor(0.5000)
    """
    if isinstance(curve, PerturbationCurve):
        scores, xs = curve.scores, curve.fractions
    elif isinstance(curve, Tensor):
        scores = curve
        xs = fractions if fractions is not None else torch.linspace(0, 1, curve.shape[-1], device=curve.device)
    else:
        raise TypeError(f"auc expects a PerturbationCurve or a tensor of scores, got {type(curve).__name__}")
    if scores.shape[-1] < 2 or xs.shape != scores.shape[-1:]:
        raise ValueError(
            f"need at least two points and one fraction per point; got scores {tuple(scores.shape)} and "
            f"fractions {tuple(xs.shape)}"
        )
    xs = xs.to(device=scores.device, dtype=scores.dtype)
    width = xs[-1] - xs[0]
    if not width > 0:
        raise ValueError("fractions must increase from the first to the last point")
    return torch.trapezoid(scores, xs, dim=-1) / width


def blur(images: Tensor, *, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Gaussian blur of an image batch (the insertion canvas of RISE's evaluation code: 11 × 11, σ = 5 px).

    A separable Gaussian with replicate padding (RISE pads with zeros, which darkens the borders).

    Args:
        images: ``(N, C, H, W)``.
        kernel_size: odd kernel width in pixels.
        sigma: standard deviation in pixels.

    Returns:
        The blurred batch, same shape, device and dtype.
    """
    x = check_images(images, "blur")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return gaussian_blur(x.detach(), sigma, kernel_size=kernel_size)


def _spatial(maps: MapsLike, what: str = "maps") -> Tensor:
    """``(N, H, W)`` float maps from a tensor or an :class:`AttributionMap` (channels summed)."""
    if isinstance(maps, AttributionMap):
        saliency = maps.spatial()
    elif isinstance(maps, Tensor):
        saliency = maps.sum(dim=1) if maps.ndim == 4 else maps
    else:
        raise TypeError(f"{what} must be a Tensor or an AttributionMap, got {type(maps).__name__}")
    if saliency.ndim != 3:
        raise ValueError(f"{what} must have shape (N, H, W) or (N, C, H, W), got {tuple(maps.shape)}")
    saliency = saliency.detach().float()
    if not bool(torch.isfinite(saliency).all()):
        raise ValueError(f"{what} contain NaN or infinite values")
    return saliency


def _canvas(baseline: CanvasSpec, x: Tensor) -> tuple[Tensor, str]:
    """What removed pixels become (or where insertion starts), ``(N, C, H, W)``, and its description."""
    if isinstance(baseline, str):
        if baseline == "blur":
            return blur(x), "blur"
        if baseline == "zeros":
            return torch.zeros_like(x), "zeros"
        if baseline == "mean":
            return fill_tensor("mean", x).expand_as(x), "mean"
        raise ValueError(f"baseline must be 'zeros', 'blur', 'mean', a number or a tensor, got {baseline!r}")
    description = "tensor" if isinstance(baseline, Tensor) else f"{float(baseline):g}"
    return fill_tensor(baseline, x).expand_as(x), description


def _curve(
    kind: Literal["deletion", "insertion"],
    model: nn.Module,
    inputs: Tensor,
    maps: MapsLike,
    target: Any,
    steps: int,
    baseline: CanvasSpec,
    score: ScoreKind,
    batch_size: int,
) -> PerturbationCurve:
    """Score every ``(sample, step)`` image of a deletion or insertion curve, in batches of ``batch_size``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_inputs(model, check_images(inputs, f"the {kind} curve")).detach()
    n, _, h, w = x.shape
    pixels = h * w
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if steps > pixels:
        raise ValueError(f"steps cannot exceed the number of pixels ({pixels}), got {steps}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if score not in ("logit", "probability"):
        raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
    saliency = _spatial(maps).to(x.device)
    if saliency.shape != (n, h, w):
        raise ValueError(
            f"maps {tuple(saliency.shape)} must match the images (N, H, W) = {(n, h, w)}; upsample layer maps to "
            "the input resolution first (explain() already returns maps at input resolution)"
        )
    canvas, description = _canvas(baseline, x)
    order = saliency.flatten(1).argsort(dim=1, descending=True, stable=True)  # (N, H*W) most salient first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=x.device).expand(n, pixels))
    counts = torch.arange(steps + 1, device=x.device) * pixels // steps  # pixels changed after each step
    tgt = as_target(target)
    points = steps + 1
    with preserved(model, x):
        model.eval()
        _, output = forward_scores(model, x, tgt)
        scorer = FixedClassScores.from_output(tgt, output, score)
        values = torch.empty(n * points, device=x.device)
        for start in range(0, n * points, batch_size):
            pair = torch.arange(start, min(start + batch_size, n * points), device=x.device)  # (B,)
            source, step = pair // points, pair % points
            changed = (rank[source] < counts[step][:, None]).view(-1, 1, h, w)  # (B, 1, H, W)
            if kind == "deletion":
                images = torch.where(changed, canvas[source], x[source])
            else:
                images = torch.where(changed, x[source], canvas[source])
            chunk, _ = forward_scores(model, images, scorer.target_for(source))
            values[pair] = chunk.float()
    classes = scorer.classes.tolist() if scorer.classes is not None else getattr(tgt, "__name__", "custom target")
    return PerturbationCurve(
        kind=kind,
        fractions=counts.float().cpu() / pixels,
        scores=values.view(n, points),
        score=score,
        target=classes,
        baseline=description,
    )


def deletion_curve(
    model: nn.Module,
    inputs: Tensor,
    maps: MapsLike,
    target: Any = None,
    *,
    steps: int = 50,
    baseline: CanvasSpec = "zeros",
    score: ScoreKind = "probability",
    batch_size: int = 64,
) -> PerturbationCurve:
    """The deletion curve: the target score as the most salient pixels are removed first.

    Pixels are ranked by the map (ties keep raster order); after step ``k`` of ``steps`` the top
    ``⌊k · H·W / steps⌋`` pixels, all channels at once, are replaced by ``baseline``. The class
    scored is fixed at the intact image (its predicted class when ``target=None``). A faithful map
    makes the score collapse early: a low :attr:`PerturbationCurve.auc`.

    Args:
        model: the network (run in eval mode, left unchanged).
        inputs: images ``(N, C, H, W)``.
        maps: ``(N, H, W)`` or ``(N, C, H, W)`` maps at the input resolution, or an :class:`AttributionMap`.
        target: as in :func:`deepscope.explain`.
        steps: number of equal chunks of pixels (RISE: one row's worth of pixels per step).
        baseline: what removed pixels become: ``"zeros"``, ``"blur"``, ``"mean"``, a number or a tensor.
        score: ``"probability"`` (the paper) or ``"logit"``.
        batch_size: perturbed images per forward pass.

    Example:
        >>> curve = deletion_curve(model, images, ds.explain(model, images, "gradcam"))  # doctest: +SKIP
        >>> curve.auc  # doctest: +SKIP
        tensor([0.08, 0.12])
    """
    return _curve("deletion", model, inputs, maps, target, steps, baseline, score, batch_size)


def insertion_curve(
    model: nn.Module,
    inputs: Tensor,
    maps: MapsLike,
    target: Any = None,
    *,
    steps: int = 50,
    baseline: CanvasSpec = "blur",
    score: ScoreKind = "probability",
    batch_size: int = 64,
) -> PerturbationCurve:
    """The insertion curve: the target score as the most salient pixels are pasted onto a blurred canvas.

    The mirror of :func:`deletion_curve`: the curve starts from ``baseline`` (default the image
    blurred by :func:`blur`) and ends at the intact image. A faithful map makes the score rise
    early: a high :attr:`PerturbationCurve.auc`. Arguments as in :func:`deletion_curve`.
    """
    return _curve("insertion", model, inputs, maps, target, steps, baseline, score, batch_size)


# --------------------------------------------------------------------------- localisation


def boxes_to_masks(boxes: Tensor | Sequence[Sequence[float]], size: tuple[int, int]) -> Tensor:
    """Boolean masks ``(N, H, W)`` from boxes ``(x0, y0, x1, y1)`` in pixel coordinates.

    A pixel ``(row i, column j)`` is inside when its centre ``(j + 0.5, i + 0.5)`` lies in the box,
    so integer boxes select ``image[..., y0:y1, x0:x1]``. ``(N, K, 4)`` boxes give the union of
    ``K`` boxes per image.

    Args:
        boxes: ``(N, 4)`` or ``(N, K, 4)``.
        size: ``(H, W)`` of the masks.

    Example:
        >>> boxes_to_masks(torch.tensor([[1, 0, 3, 2]]), (3, 4)).int()
        tensor([[[0, 1, 1, 0],
                 [0, 1, 1, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    b = torch.as_tensor(boxes, dtype=torch.float32)
    if b.ndim == 2:
        b = b[:, None]  # (N, 1, 4)
    if b.ndim != 3 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) or (N, K, 4) as (x0, y0, x1, y1), got {tuple(b.shape)}")
    x0, y0, x1, y1 = b.unbind(-1)  # each (N, K)
    if bool(((x1 < x0) | (y1 < y0)).any()):
        raise ValueError("boxes must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
    h, w = size
    ys = torch.arange(h, device=b.device) + 0.5
    xs = torch.arange(w, device=b.device) + 0.5
    rows = (ys >= y0[..., None]) & (ys <= y1[..., None])  # (N, K, H)
    cols = (xs >= x0[..., None]) & (xs <= x1[..., None])  # (N, K, W)
    return (rows[..., :, None] & cols[..., None, :]).any(dim=1)  # (N, H, W)


def _region(masks: Tensor | None, boxes: Any, saliency: Tensor) -> Tensor:
    """The ground-truth region ``(N, H, W)`` bool on the maps' device, from masks or boxes."""
    if (masks is None) == (boxes is None):
        raise ValueError("give exactly one of masks=(N, H, W) and boxes=(N, 4) as (x0, y0, x1, y1)")
    if boxes is not None:
        region = boxes_to_masks(boxes, (saliency.shape[1], saliency.shape[2]))
    else:
        if not isinstance(masks, Tensor):
            raise TypeError(f"masks must be a Tensor (N, H, W), got {type(masks).__name__}")
        region = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
        region = region if region.dtype == torch.bool else region > 0.5
    if region.shape != saliency.shape:
        raise ValueError(f"masks must match the maps {tuple(saliency.shape)}, got {tuple(region.shape)}")
    return region.to(saliency.device)


def pointing_game(
    maps: MapsLike, masks: Tensor | None = None, *, boxes: Any = None, tolerance: float | None = None
) -> Tensor:
    """Pointing game (Zhang et al. 2016): does the map's maximum fall on the object?

    A hit when every pixel where the map reaches its maximum lies within ``tolerance`` pixels
    (Euclidean) of the object region, i.e. inside the region dilated by a disc of that radius
    (the paper: 15 px on 224 px images; by default scaled to the maps, ``15 · min(H, W) / 224``).
    Requiring every maximum keeps flat maps from scoring by luck. An empty region is a miss.

    Args:
        maps: ``(N, H, W)``, ``(N, C, H, W)`` (summed over channels) or an :class:`AttributionMap`.
        masks: ``(N, H, W)`` object masks (bool, or numbers where ``> 0.5`` is inside).
        boxes: instead of masks, ``(N, 4)`` or ``(N, K, 4)`` boxes (see :func:`boxes_to_masks`).
        tolerance: radius in pixels (default: 15 px at 224 px, scaled to the maps' size).

    Returns:
        ``(N,)`` bool hits; the accuracy is ``hits.float().mean()``.
    """
    saliency = _spatial(maps)
    region = _region(masks, boxes, saliency)
    if tolerance is None:
        tolerance = 15.0 * min(saliency.shape[1:]) / 224
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    r = math.floor(tolerance)
    if r > 0:
        t = torch.arange(-r, r + 1, device=region.device, dtype=torch.float32)
        disc = (t[:, None] ** 2 + t[None, :] ** 2 <= tolerance**2).float()  # (2r+1, 2r+1)
        near = F.conv2d(region.float()[:, None], disc[None, None], padding=r)[:, 0] > 0.5  # (N, H, W)
    else:
        near = region
    peak = saliency == saliency.flatten(1).amax(dim=1)[:, None, None]  # (N, H, W)
    return ~(peak & ~near).flatten(1).any(dim=1) & region.flatten(1).any(dim=1)


def energy_in_mask(maps: MapsLike, masks: Tensor | None = None, *, boxes: Any = None) -> Tensor:
    """Share of the positive attribution that falls on the object (Score-CAM's energy-based pointing game).

    ``Σ_{u ∈ mask} max(m(u), 0) / Σ_u max(m(u), 0)``; ``NaN`` for a map without positive values.

    Args:
        maps: ``(N, H, W)``, ``(N, C, H, W)`` (summed over channels) or an :class:`AttributionMap`.
        masks: ``(N, H, W)`` object masks.
        boxes: instead of masks, boxes (see :func:`boxes_to_masks`).

    Returns:
        ``(N,)`` shares in ``[0, 1]``.
    """
    saliency = _spatial(maps)
    region = _region(masks, boxes, saliency)
    positive = saliency.clamp_min(0)
    return (positive * region).flatten(1).sum(dim=1) / positive.flatten(1).sum(dim=1)
