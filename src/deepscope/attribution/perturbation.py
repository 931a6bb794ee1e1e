"""Perturbation attributions: occlusion (Zeiler & Fergus 2014) and RISE (Petsiuk, Das & Saenko 2018).

Both change the input and watch the target score, so they need no gradient. Every perturbed
copy is built by one batched tensor operation and scored by
:func:`~deepscope.attribution._autograd.forward_scores` (``torch.inference_mode()``) in chunks of
``batch_size`` images: the cost is the number of perturbed images × one batched forward, never a
Python loop over images (DESIGN §4).

Scores of perturbed copies. A perturbed copy is always scored for the class its source image was
explained for: the predicted class (``target=None``) is read once, on the unmodified image, and
stays fixed, as in captum and in the papers. ``score="logit"`` scores that class's logit;
``score="probability"`` its softmax probability (a sigmoid for a single-logit output). A custom
``target`` callable decides its own score (``score`` is then ignored) and is called on batches of
perturbed copies, so it must score each row of the output independently (e.g.
``lambda out: out[:, 3]``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.attribution._autograd import forward_scores, output_tensor
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, Context, MethodOutput
from deepscope.hooks import HookSet, first_tensor
from deepscope.layers import LayerSpec, resolve_layer
from deepscope.targets import ClassTarget, PredictedClass, Target

__all__ = ["RISE", "FixedClassScores", "Occlusion", "ScoreKind", "rise_masks"]

ScoreKind = Literal["logit", "probability"]
"""What a perturbed copy is scored by: the class logit or its softmax probability."""

BaselineSpec = float | str | Tensor
"""A fill value, ``"mean"`` (each image's per-channel mean) or a tensor broadcastable to the batch."""

_OCCLUSION_EXTRAS = ("top_class", "activation")


# --------------------------------------------------------------------------- shared pieces


def _output_logits(output: Any) -> Tensor:
    """The model output as ``(N, K)`` logits (``(N,)`` becomes ``(N, 1)``)."""
    tensor = output_tensor(output)
    return tensor[:, None] if tensor.ndim == 1 else tensor.flatten(1)


@dataclass(frozen=True)
class FixedClassScores:
    """Scores perturbed copies of a batch, each for its source image's class (see the module docstring).

    Build it with :meth:`from_output` on the unmodified batch's output, then call
    :meth:`target_for` with the source index of each row of a perturbed batch.

    Attributes:
        target: the user's target.
        classes: ``(N,)`` class explained per source image, or ``None`` for a custom target.
        score: ``"logit"`` or ``"probability"``.
    """

    target: Target
    classes: Tensor | None
    score: ScoreKind

    @classmethod
    def from_output(cls, target: Target, output: Tensor, score: ScoreKind) -> FixedClassScores:
        """Fix the class of each image from the unmodified batch's ``output``."""
        if score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
        n = output.shape[0]
        classes: Tensor | None = None
        if isinstance(target, PredictedClass):
            logits = _output_logits(output)  # (N, K)
            classes = logits.argmax(dim=1)
        elif isinstance(target, ClassTarget):
            indices = target.indices
            values = [indices] * n if isinstance(indices, int) else list(indices)
            classes = torch.tensor(values, dtype=torch.long, device=output.device)  # (N,)
        return cls(target=target, classes=classes, score=score)

    def scores(self, output: Any, source: Tensor) -> Tensor:
        """Scores ``(B,)`` of a perturbed batch's ``output``; ``source`` ``(B,)`` indexes the source images."""
        if self.classes is None:
            return self.target(output)
        logits = _output_logits(output)  # (B, K)
        if self.score == "probability":
            probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
            return probs.gather(1, self.classes[source][:, None]).squeeze(1)
        return logits.gather(1, self.classes[source][:, None]).squeeze(1)

    def target_for(self, source: Tensor) -> Target:
        """A :data:`Target` for a perturbed batch whose rows come from the images ``source`` ``(B,)``."""
        return lambda output: self.scores(output, source)


def check_images(inputs: Tensor, what: str) -> Tensor:
    """Raise unless ``inputs`` is an image batch ``(N, C, H, W)``."""
    if inputs.ndim != 4:
        raise ValueError(f"{what} perturbs images, so it needs inputs of shape (N, C, H, W); got {tuple(inputs.shape)}")
    return inputs


def fill_tensor(baseline: BaselineSpec, x: Tensor, what: str = "baseline") -> Tensor:
    """The baseline as a tensor broadcastable to ``x`` ``(N, C, H, W)``, on its device and dtype."""
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"{what} must be a number, 'mean' or a tensor, got {baseline!r}")
        return x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    if isinstance(baseline, Tensor):
        base = baseline.detach().to(device=x.device, dtype=x.dtype)
        try:
            torch.broadcast_shapes(base.shape, x.shape)
        except RuntimeError:
            raise ValueError(
                f"a {what} tensor must broadcast to the inputs {tuple(x.shape)}, got {tuple(base.shape)}"
            ) from None
        return base
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        return torch.full((1, 1, 1, 1), float(baseline), device=x.device, dtype=x.dtype)
    raise TypeError(f"{what} must be a number, 'mean' or a tensor, got {type(baseline).__name__}")


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):
        pair: tuple[Any, ...] = (value, value)
    elif isinstance(value, (tuple, list)):
        pair = tuple(value)
    else:
        raise TypeError(f"{what} must be an int or a pair of ints (height, width), got {value!r}")
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{what} must be an int or a pair of ints (height, width), got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


def _positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def _covers(size: int, window: int, stride: int, device: torch.device) -> Tensor:
    """``(positions, size)`` bool: which pixels the window covers at each position along one axis.

    Positions are ``0, stride, 2·stride…``, ``ceil((size − window) / stride) + 1`` of them, as in
    captum's Occlusion: the last window may stick out past the border and is clipped there.
    """
    count = math.ceil((size - window) / stride) + 1
    start = torch.arange(count, device=device)[:, None] * stride  # (P, 1)
    pixel = torch.arange(size, device=device)[None, :]  # (1, size)
    return (pixel >= start) & (pixel < start + window)  # (P, size)


# --------------------------------------------------------------------------- occlusion


@ATTRIBUTIONS.register("occlusion")
@dataclass(frozen=True)
class Occlusion(Attribution):
    """Occlusion sensitivity (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks", Fig. 7).

    A ``window`` patch filled with ``baseline`` slides over the image with ``stride``. For each
    position ``p`` the target score drops by ``Δ_p = f_c(x) − f_c(x ⊙ (1 − M_p) + b · M_p)``; the
    map spreads the drops back to pixels, each pixel getting the mean drop over the patches that
    cover it, ``map(u) = Σ_p Δ_p M_p(u) / Σ_p M_p(u)`` (captum's ``Occlusion`` does the same). The
    patch covers all channels. Positions run from the top-left corner every ``stride`` pixels until
    the window reaches the border (the last one may be clipped), so ``stride`` must not exceed
    ``window``. All ``N × positions`` occluded images are scored in batches of ``batch_size``
    under ``torch.inference_mode()``.

    On request the other panels of the paper's Fig. 7 are returned in ``extras``, one value per
    position ``(N, gh, gw)``: ``"top_class"``, the most probable class of the occluded image
    (panel e), and ``"activation"``, the total activation (sum over positions) of one feature map
    of ``activation_layer`` (panel b), that of ``activation_channel`` or, with ``"strongest"``,
    of the channel with the largest total activation on the unoccluded image (its index is in
    ``extras["activation_channel"]``, ``(N,)``). ``extras["score"]`` ``(N, gh, gw)`` always holds
    the target score per position (panel d, with ``score="probability"``).

    Args:
        window: patch size in pixels, an int or ``(height, width)``.
        stride: step between positions, an int or ``(height, width)``; at most ``window``.
        baseline: the patch's fill value: a number, ``"mean"`` (each image's per-channel mean;
            the paper used a grey square) or a tensor broadcastable to ``(N, C, H, W)``.
        batch_size: occluded images per forward pass.
        score: ``"logit"`` (default; captum's convention) or ``"probability"`` (the paper's
            panel d); see the module docstring.
        extras: any of ``"top_class"`` and ``"activation"``.
        activation_layer: layer (dotted name or module) whose feature map is tracked; giving it
            requests ``"activation"``. Its output must be channel-first, ``(N, C, ...)``.
        activation_channel: channel index, or ``"strongest"``.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> result = ds.explain(model, images, "occlusion", window=32, stride=16,  # doctest: +SKIP
        ...                     extras=("top_class",), activation_layer="layer4")
        >>> result.maps.shape, result.extras["activation"].shape  # doctest: +SKIP
        (torch.Size([8, 224, 224]), torch.Size([8, 13, 13]))
    """

    window: int | tuple[int, int] = 16
    stride: int | tuple[int, int] = 8
    baseline: BaselineSpec = 0.0
    batch_size: int = 64
    score: ScoreKind = "logit"
    extras: tuple[str, ...] = ()
    activation_layer: LayerSpec | None = None
    activation_channel: int | str = "strongest"

    def __post_init__(self) -> None:
        window, stride = _pair(self.window, "window"), _pair(self.stride, "stride")
        if stride[0] > window[0] or stride[1] > window[1]:
            raise ValueError(f"stride {self.stride} must not exceed window {self.window}, or some pixels are skipped")
        _positive_int(self.batch_size, "batch_size")
        if self.score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability', got {self.score!r}")
        extras = (self.extras,) if isinstance(self.extras, str) else tuple(self.extras)
        unknown = sorted(set(extras) - set(_OCCLUSION_EXTRAS))
        if unknown:
            raise ValueError(f"unknown occlusion extras {unknown}; valid: {', '.join(_OCCLUSION_EXTRAS)}")
        if "activation" in extras and self.activation_layer is None:
            raise ValueError("extras 'activation' needs activation_layer=, the layer whose feature map is tracked")
        channel = self.activation_channel
        if channel != "strongest" and (isinstance(channel, bool) or not isinstance(channel, numbers.Integral)):
            raise ValueError(f"activation_channel must be a channel index or 'strongest', got {channel!r}")
        if isinstance(channel, numbers.Integral) and channel < 0:
            raise ValueError(f"activation_channel must be >= 0, got {channel}")
        if isinstance(self.baseline, str) and self.baseline != "mean":
            raise ValueError(f"baseline must be a number, 'mean' or a tensor, got {self.baseline!r}")
        object.__setattr__(self, "extras", extras)

    def compute(self, ctx: Context) -> MethodOutput:
        x = check_images(ctx.inputs, "occlusion")  # (N, C, H, W)
        n, _, h, w = x.shape
        (wh, ww), (sh, sw) = _pair(self.window, "window"), _pair(self.stride, "stride")
        if wh > h or ww > w:
            raise ValueError(f"window {(wh, ww)} is larger than the images {(h, w)}")
        rows = _covers(h, wh, sh, x.device)  # (gh, H)
        cols = _covers(w, ww, sw, x.device)  # (gw, W)
        gh, gw = rows.shape[0], cols.shape[0]
        base = fill_tensor(self.baseline, x)
        track = "activation" in self.extras or self.activation_layer is not None
        with HookSet() as hooks:
            sums = _channel_sums(hooks, ctx.model, self.activation_layer) if track else None
            scores0, output = forward_scores(ctx.model, x, ctx.target)
            scorer = FixedClassScores.from_output(ctx.target, output, self.score)
            ref = scores0 if scorer.classes is None else scorer.scores(output, torch.arange(n, device=x.device))
            channel = self._channel(sums.pop(), n) if sums is not None else None  # (N,)

            positions = gh * gw
            total = n * positions
            score = torch.empty(total, device=x.device, dtype=ref.dtype)  # pairs (image, position), row-major
            top = torch.empty(total, device=x.device, dtype=torch.long) if "top_class" in self.extras else None
            act = torch.empty(total, device=x.device, dtype=torch.float32) if channel is not None else None
            for start in range(0, total, self.batch_size):
                pair = torch.arange(start, min(start + self.batch_size, total), device=x.device)  # (B,)
                source, pos = pair // positions, pair % positions
                patch = rows[pos // gw][:, :, None] & cols[pos % gw][:, None, :]  # (B, H, W)
                occluded = torch.where(patch[:, None], base.expand_as(x)[source], x[source])  # (B, C, H, W)
                chunk, out = forward_scores(ctx.model, occluded, scorer.target_for(source))
                score[pair] = chunk
                if top is not None:
                    top[pair] = _output_logits(out).argmax(dim=1)
                if act is not None and sums is not None and channel is not None:
                    act[pair] = sums.pop().gather(1, channel[source][:, None]).squeeze(1).float()
        drop = (ref[:, None] - score.view(n, positions)).view(n, gh, gw)  # (N, gh, gw)
        r, c = rows.to(drop.dtype), cols.to(drop.dtype)
        count = r.sum(0)[:, None] * c.sum(0)[None, :]  # (H, W) patches covering each pixel
        maps = torch.einsum("ih,nij,jw->nhw", r, drop, c) / count  # (N, H, W)
        extras: dict[str, Tensor] = {"score": score.view(n, gh, gw)}
        if top is not None:
            extras["top_class"] = top.view(n, gh, gw)
        if act is not None and channel is not None:
            extras["activation"] = act.view(n, gh, gw)
            extras["activation_channel"] = channel
        return MethodOutput(maps=maps, scores=scores0, output=output, extras=extras)

    def _channel(self, sums: Tensor, n: int) -> Tensor:
        """``(N,)`` the tracked channel of each image, from the unoccluded channel sums ``(N, C)``."""
        if self.activation_channel == "strongest":
            return sums.argmax(dim=1)
        channel = int(self.activation_channel)
        if channel >= sums.shape[1]:
            raise ValueError(f"activation_channel {channel} is out of range: the layer has {sums.shape[1]} channels")
        return torch.full((n,), channel, dtype=torch.long, device=sums.device)


class _SumQueue:
    """Per-channel totals ``(B, C)`` of a layer's output, one entry per forward pass."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[Tensor] = []

    def pop(self) -> Tensor:
        if len(self.items) != 1:
            raise RuntimeError(
                f"activation_layer {self.name!r} ran {len(self.items)} times in one forward pass; "
                "choose a layer that runs exactly once"
            )
        return self.items.pop()


def _channel_sums(hooks: HookSet, model: nn.Module, layer: LayerSpec | None) -> _SumQueue:
    """Hook ``layer`` so that each forward pushes its per-channel totals ``(B, C)``."""
    if layer is None:
        raise ValueError("activation tracking needs activation_layer=")
    name, module = resolve_layer(model, layer)
    queue = _SumQueue(name)

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None or tensor.ndim < 2:
            raise ValueError(f"activation_layer {name!r} must output channel-first maps (N, C, ...)")
        queue.items.append(tensor.flatten(2).sum(dim=2) if tensor.ndim > 2 else tensor)  # (B, C)

    hooks.forward(module, hook)
    return queue


# --------------------------------------------------------------------------- RISE


def rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int], *, device: torch.device | None = None) -> Tensor:
    """RISE's smooth masks from binary grids: bilinear upsampling, then a shifted crop.

    Each ``s × s`` grid is upsampled bilinearly (half-pixel centres, edges clamped) to
    ``(s + 1) · ⌈H / s⌉ × (s + 1) · ⌈W / s⌉`` and cropped to ``H × W`` at the offset ``shifts[i]``
    (each in ``[0, ⌈H/s⌉) × [0, ⌈W/s⌉)``), as in the paper's Sec. 3.2.

    Args:
        grids: ``(M, s, s)`` 0/1 values.
        shifts: ``(M, 2)`` integer offsets (rows, columns).
        size: ``(H, W)``.
        device: where to build the masks (default: the grids' device).

    Returns:
        ``(M, H, W)`` masks in ``[0, 1]``.
    """
    h, w = size
    s = grids.shape[-1]
    grids = grids.to(device=device or grids.device, dtype=torch.float32)
    shifts = shifts.to(grids.device)
    # Bilinear upsampling is separable: up = A_h · G · A_wᵀ, and the crop only selects rows of A.
    rows = _upsampling_matrix(s, (s + 1) * math.ceil(h / s), grids.device)  # (up_h, s)
    cols = _upsampling_matrix(s, (s + 1) * math.ceil(w / s), grids.device)  # (up_w, s)
    row = rows[shifts[:, 0, None] + torch.arange(h, device=grids.device)]  # (M, H, s)
    col = cols[shifts[:, 1, None] + torch.arange(w, device=grids.device)]  # (M, W, s)
    return (row @ grids @ col.transpose(1, 2)).clamp_(0, 1)  # (M, H, W); clamp: rounding


def _upsampling_matrix(size: int, up: int, device: torch.device) -> Tensor:
    """``(up, size)`` matrix of 1-D linear upsampling (half-pixel centres, edges clamped), as ``F.interpolate``."""
    eye = torch.eye(size, device=device)[None]  # (1, size, size): one basis vector per channel
    return F.interpolate(eye, size=up, mode="linear")[0].T  # (up, size)


@ATTRIBUTIONS.register("rise")
@dataclass(frozen=True)
class RISE(Attribution):
    """RISE (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models").

    ``n_masks`` random masks ``M_i`` are made from ``cell × cell`` binary grids (each cell kept
    with probability ``p``), upsampled bilinearly to ``(cell + 1)`` cells of ``⌈H / cell⌉`` pixels
    and cropped at a random shift (:func:`rise_masks`). The saliency is the score-weighted mean
    of the masks, normalised by the expected mask value as in the paper's Eq. 6:

        ``S(u) = Σ_i f_c(x ⊙ M_i) · M_i(u) / (n_masks · p)``

    ``normalize="coverage"`` divides by each pixel's empirical coverage ``Σ_i M_i(u)`` instead of
    its expectation ``n_masks · p``: both estimate ``E[f_c(x ⊙ M) | M(u) = 1]`` (the paper's
    Eq. 5), the ratio estimator with less variance; it is exactly flat for a model that ignores
    its input, while the paper's estimate is flat only up to sampling noise. That noise is the
    masks' coverage pattern, the same for every model: with a few hundred masks it can dominate
    the ranking of the pixels, and the paper's RISE then fails the sanity check (Spearman ≈ 0.74
    after randomising the shapes CNN, 256 masks) where ``"coverage"`` passes (≈ 0.04).

    Masked images are ``b + (x − b) ⊙ M_i`` with ``b = baseline`` (the paper: ``0``). Following
    the paper, ``f_c`` is the softmax probability of the class (``score="probability"``);
    ``score="logit"`` uses the logit, and a custom ``target`` callable decides its own score (see
    the module docstring). Grids and shifts are drawn up front from ``generator`` (never the
    global RNG), so the maps do not depend on ``batch_size``; ``generator=None`` uses a fresh
    generator seeded from the operating system. Masked images are scored in batches of
    ``batch_size`` under ``torch.inference_mode()``; masks are built per batch.

    Args:
        n_masks: number of masks (paper: 4000 for ResNet50 on ImageNet).
        cell: grid size ``s``: the masks are drawn on an ``s × s`` grid (paper: 7).
        p: probability of keeping a cell (paper: 0.5).
        baseline: value of masked-out pixels: a number, ``"mean"`` or a broadcastable tensor.
        batch_size: masked images per forward pass.
        score: ``"probability"`` (the paper) or ``"logit"``.
        normalize: ``"expected"`` (the paper: divide by ``n_masks · p``) or ``"coverage"``.
        generator: source of randomness for the grids and shifts.

    Example:
        >>> import torch, deepscope as ds  # doctest: +SKIP
        >>> result = ds.explain(model, images, "rise", n_masks=2000,  # doctest: +SKIP
        ...                     generator=torch.Generator().manual_seed(0))
        >>> result.maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    n_masks: int = 4000
    cell: int = 7
    p: float = 0.5
    baseline: BaselineSpec = 0.0
    batch_size: int = 64
    score: ScoreKind = "probability"
    normalize: Literal["expected", "coverage"] = "expected"
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _positive_int(self.n_masks, "n_masks")
        _positive_int(self.cell, "cell")
        _positive_int(self.batch_size, "batch_size")
        if not isinstance(self.p, numbers.Real) or not 0 < self.p <= 1:
            raise ValueError(f"p (the probability of keeping a cell) must be in (0, 1], got {self.p!r}")
        if self.score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability', got {self.score!r}")
        if self.normalize not in ("expected", "coverage"):
            raise ValueError(f"normalize must be 'expected' or 'coverage', got {self.normalize!r}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(self.generator).__name__}")
        if isinstance(self.baseline, str) and self.baseline != "mean":
            raise ValueError(f"baseline must be a number, 'mean' or a tensor, got {self.baseline!r}")

    def draw(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Draw the binary grids ``(n_masks, cell, cell)`` and shifts ``(n_masks, 2)`` for images of ``size``."""
        gen = self.generator
        if gen is None:
            gen = torch.Generator()
            gen.seed()  # fresh entropy; the global RNG is not touched
        s = self.cell
        grids = torch.rand(self.n_masks, s, s, generator=gen, device=gen.device) < self.p
        cell_h, cell_w = math.ceil(size[0] / s), math.ceil(size[1] / s)
        shift_h = torch.randint(0, cell_h, (self.n_masks,), generator=gen, device=gen.device)
        shift_w = torch.randint(0, cell_w, (self.n_masks,), generator=gen, device=gen.device)
        return grids, torch.stack([shift_h, shift_w], dim=1)

    def compute(self, ctx: Context) -> MethodOutput:
        x = check_images(ctx.inputs, "rise")  # (N, C, H, W)
        n, _, h, w = x.shape
        base = fill_tensor(self.baseline, x).expand_as(x)
        diff = x - base  # (N, C, H, W)
        grids, shifts = self.draw((h, w))
        grids, shifts = grids.to(x.device), shifts.to(x.device)
        scores0, output = forward_scores(ctx.model, x, ctx.target)
        scorer = FixedClassScores.from_output(ctx.target, output, self.score)
        saliency = torch.zeros(n, h * w, device=x.device, dtype=x.dtype)  # (N, H*W)
        coverage = torch.zeros(h * w, device=x.device, dtype=x.dtype)  # (H*W,) Σ_i M_i
        masks_per_batch = max(1, self.batch_size // n)
        images_per_batch = min(n, self.batch_size)
        for m0 in range(0, self.n_masks, masks_per_batch):
            m1 = min(m0 + masks_per_batch, self.n_masks)
            masks = rise_masks(grids[m0:m1], shifts[m0:m1], (h, w)).to(x.dtype)  # (M, H, W)
            coverage += masks.flatten(1).sum(dim=0)
            for n0 in range(0, n, images_per_batch):
                n1 = min(n0 + images_per_batch, n)
                # b + (x − b) ⊙ M in one fused op: (n, 1, C, H, W) with (1, M, 1, H, W) -> (n*M, C, H, W)
                masked = torch.addcmul(base[n0:n1, None], diff[n0:n1, None], masks[None, :, None]).flatten(0, 1)
                source = torch.arange(n0, n1, device=x.device).repeat_interleave(m1 - m0)  # (n*M,)
                chunk, _ = forward_scores(ctx.model, masked, scorer.target_for(source))
                saliency[n0:n1] += chunk.view(n1 - n0, m1 - m0).to(x.dtype) @ masks.flatten(1)  # (n, H*W)
        if self.normalize == "coverage":
            maps = (saliency / coverage.clamp_min(torch.finfo(x.dtype).tiny)).view(n, h, w)
        else:
            maps = saliency.view(n, h, w) / (self.n_masks * self.p)
        return MethodOutput(maps=maps, scores=scores0, output=output)
