"""What layers respond to over a dataset: streamed per-channel statistics and the Zeiler–Fergus top-k.

Both functions stream the data in batches (a tensor, a dataset or a ``DataLoader``) under
``torch.inference_mode()`` and stop each forward pass at the last layer they need; only running
sums (or the current top k per channel) are kept, so memory does not grow with the dataset.

- :func:`activations`: per channel of each layer, mean, std (Chan's parallel merge of per-batch
  moments, in float64), minimum, maximum, share of exact zeros, share of saturated outputs for
  bounded activations; a value histogram per layer; the feature maps of one example input.
- :func:`top_activations` (Zeiler & Fergus 2014, §4): for each channel, the ``k`` images whose
  spatial maximum is largest (distinct images, sorted), the exact receptive field of each argmax
  unit (:mod:`deepscope.receptive`), the input patch under it and its DeconvNet projection
  (:mod:`deepscope.deconv`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from deepscope._data import batches, dataset_size, fetch
from deepscope._forward import forward_until
from deepscope._progress import track
from deepscope.deconv import deconv_project
from deepscope.guard import preserved
from deepscope.layers import LayerSpec, activation_bounds, model_device, resolve_layer, resolve_layers
from deepscope.receptive import ReceptiveField, receptive_field
from deepscope.repro import library_versions

__all__ = ["ActivationStats", "ChannelStats", "TopActivations", "activations", "top_activations"]

_SATURATION_MARGIN = 0.01  # share of a bounded activation's range counted as "at the bound"
_HISTOGRAM_SAMPLE = 1 << 15  # about how many values of each batch the histogram counts (whole inputs, evenly spaced)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Per-channel statistics of one layer over a dataset, ``(C,)`` float64 tensors on the CPU.

    ``saturation`` is NaN for unbounded activations. ``histogram`` counts the layer's values in
    ``bins`` equal buckets between ``edges[0]`` and ``edges[-1]`` (the range of the first batch,
    widened by half on each side) on evenly spaced whole inputs of each batch, about 32,768 values
    per batch (every value for smaller outputs; ``sampled`` says how many); ``below`` and ``above``
    count the sampled values outside the range, so nothing is dropped unseen. Everything else is exact.
    """

    layer: str
    count: int  # values per channel (images × positions)
    mean: Tensor
    std: Tensor
    min: Tensor
    max: Tensor
    zero_fraction: Tensor
    saturation: Tensor
    histogram: Tensor
    edges: Tensor
    below: int
    above: int
    sampled: int
    example: Tensor  # (C, H, W) or (C,): the layer's output for the example input


@dataclass(frozen=True, slots=True)
class ActivationStats:
    """:func:`activations`' result: a :class:`ChannelStats` per layer, with provenance."""

    layers: dict[str, ChannelStats]
    images: int
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per layer: channels, mean, std, share of zeros, dead channels (never non-zero), saturation."""
        rows = []
        for name, stats in self.layers.items():
            rows.append(
                {
                    "layer": name,
                    "channels": int(stats.mean.numel()),
                    "mean": float(stats.mean.mean()),
                    "std": float(stats.std.mean()),
                    "zero_fraction": float(stats.zero_fraction.mean()),
                    "dead_channels": float(((stats.max == 0) & (stats.min == 0)).double().mean()),
                    "saturation": float(stats.saturation.mean()),
                }
            )
        return rows


@dataclass(frozen=True, slots=True)
class TopActivations:
    """:func:`top_activations`' result for one layer: per channel, its ``k`` strongest images.

    Attributes:
        layer: the layer's dotted name.
        channels: ``(C,)`` the channels reported.
        scores: ``(C, k)`` spatial maxima, descending.
        indices: ``(C, k)`` dataset positions of the images.
        positions: ``(C, k, 2)`` row, column of each maximum in the layer's map.
        boxes: ``(C, k, 4)`` top, left, bottom, right of each unit's receptive field in the image (clipped).
        patches: ``(C, k, C_in, h, w)`` the input under each field, placed in a full-size field tile
            (zeros where the field leaves the image; see ``inside``).
        projections: the DeconvNet projections of the same units, cropped like the patches (or None).
        inside: ``(C, k, h, w)`` whether each tile pixel lies inside the image.
        field: the layer's :class:`~deepscope.receptive.ReceptiveField`.
    """

    layer: str
    channels: Tensor
    scores: Tensor
    indices: Tensor
    positions: Tensor
    boxes: Tensor
    patches: Tensor
    projections: Tensor | None
    inside: Tensor
    field: ReceptiveField
    images: int
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def activations(
    model: nn.Module,
    data: Any,
    layers: LayerSpec | Sequence[LayerSpec],
    *,
    batch_size: int = 256,
    bins: int = 50,
    example: int = 0,
) -> ActivationStats:
    """Stream ``data`` through ``model`` and summarise each channel of ``layers`` (see the module docstring).

    Args:
        model: the network (left unchanged).
        data: a tensor ``(N, ...)``, a dataset (items ``x`` or ``(x, label)``) or a ``DataLoader``.
        layers: dotted names or modules; channels are dim 1 of their outputs.
        batch_size: inputs per forward pass (a ``DataLoader`` keeps its own).
        bins: histogram buckets per layer.
        example: the position of the input whose feature maps are kept.
    """
    watched = resolve_layers(model, layers)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    bounds = {name: activation_bounds(module) for name, module in watched.items()}
    running: dict[str, _Moments] = {}
    seen = 0
    device = model_device(model)
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        for batch in track(batches(data, batch_size), "activations", total=_batch_count(data, batch_size)):
            outputs = forward_until(model, watched, batch.to(device))
            for name, output in outputs.items():
                if not output.is_floating_point() or output.ndim < 2:
                    raise ValueError(f"layer {name!r} gives {tuple(output.shape)} {output.dtype}: no channels (dim 1)")
                moments = running.setdefault(name, _Moments(output, bins, bounds[name]))
                moments.add(output)
                if seen <= example < seen + output.shape[0]:
                    moments.example = output[example - seen].detach().float().cpu().clone()
            seen += batch.shape[0]
            del outputs, output  # freed before the next forward pass allocates its own
    if not seen:
        raise ValueError("data holds no input")
    if example >= seen:
        raise ValueError(f"example={example} but the data holds {seen} inputs")
    stats = {name: running[name].result(name) for name in watched}
    params = {"batch_size": batch_size, "bins": bins, "example": example}
    return ActivationStats(stats, seen, params, library_versions())


def top_activations(
    model: nn.Module,
    data: Any,
    layer: LayerSpec,
    channels: Sequence[int] | Tensor | None = None,
    k: int = 9,
    *,
    batch_size: int = 256,
    project: bool = True,
) -> TopActivations:
    """The Zeiler–Fergus top-``k`` of each channel of ``layer`` over ``data``, with patches and projections.

    Args:
        model: the network (left unchanged).
        data: a tensor of images ``(N, C, H, W)``, a dataset or an unshuffled ``DataLoader`` (the images
            are fetched again by position for their patches).
        layer: a layer with a spatial output ``(N, C', H', W')``.
        channels: the channels to report (default: all).
        k: images per channel (distinct: each image contributes its spatial maximum once).
        batch_size: inputs per forward pass.
        project: also compute each unit's DeconvNet projection.

    Raises:
        ValueError: the layer has no spatial output, ``k`` exceeds the number of images, or a channel is out of range.
    """
    name, module = resolve_layer(model, layer)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    size = dataset_size(data)
    if size is not None and k > size:
        raise ValueError(f"k={k} is more than the {size} images of the data")
    device = model_device(model)
    best: _TopK | None = None
    seen = 0
    first: Tensor | None = None
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        for batch in track(batches(data, batch_size), "top activations", total=_batch_count(data, batch_size)):
            first = batch[:1].clone() if first is None else first  # a copy: a view would keep the batch alive
            output = forward_until(model, {name: module}, batch.to(device))[name]
            if output.ndim != 4:
                raise ValueError(
                    f"top activations need a spatial layer (N, C, H, W); {name!r} gives {tuple(output.shape)}: "
                    "choose a convolution or pooling layer"
                )
            if best is None:
                best = _TopK(_channels(channels, output.shape[1]), output.shape[1], k, device)
            best.add(output, seen)
            seen += batch.shape[0]
            del output  # freed before the next forward pass allocates its own
    if best is None or first is None:
        raise ValueError("data holds no input")
    if k > seen:
        raise ValueError(f"k={k} is more than the {seen} images of the data")
    field = receptive_field(model, name, tuple(first.shape[1:]))
    scores, indices, positions = (t.cpu() for t in best.result())
    patches, projections, inside, boxes = _patches(
        model, data, name, field, best.channels.cpu(), indices, positions, project
    )
    params = {"k": k, "batch_size": batch_size, "project": project}
    return TopActivations(
        name, best.channels.cpu(), scores, indices, positions, boxes, patches, projections, inside, field, seen,
        params, library_versions(),
    )  # fmt: skip


class _Moments:
    """Running per-channel moments of one layer (Chan et al.'s parallel update), extremes, counts and a histogram."""

    def __init__(self, first: Tensor, bins: int, bounds: tuple[float, float] | None) -> None:
        channels = first.shape[1]
        zeros = torch.zeros(channels, dtype=torch.float64, device=first.device)
        self.count = 0
        self.mean, self.m2, self.zeros, self.saturated = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
        self.min = torch.full_like(zeros, math.inf)
        self.max = torch.full_like(zeros, -math.inf)
        self.bounds = bounds
        low, high = float(first.min()), float(first.max())
        margin = 0.5 * (high - low) or 1.0
        self.edges = torch.linspace(low - margin, high + margin, bins + 1, dtype=torch.float64)
        self.histogram = torch.zeros(bins, dtype=torch.float64, device=first.device)
        self.below = self.above = self.sampled = 0
        self.shift: Tensor | None = None
        self.buffer: Tensor | None = None
        self.example: Tensor | None = None

    def add(self, output: Tensor) -> None:
        x = output.detach().float().reshape(output.shape[0], output.shape[1], -1)  # (N, C, positions)
        if self.buffer is None or self.buffer.shape[1:] != x.shape[1:] or len(self.buffer) < len(x):
            self.buffer = torch.empty_like(x)  # one scratch tensor for every pass: no allocation per batch
        scratch = self.buffer[: len(x)]
        n = x.shape[0] * x.shape[2]
        self.zeros += n - _per_channel(torch.ne(x, 0, out=scratch), torch.sum).double()
        if self.bounds is not None:  # within the margin of either bound: |x - middle| >= half range - margin
            low, high = self.bounds
            reach = (high - low) / 2 - _SATURATION_MARGIN * (high - low)
            outside = torch.sub(x, (low + high) / 2, out=scratch).abs_().ge_(reach)
            self.saturated += _per_channel(outside, torch.sum).double()
        if self.shift is None:  # sums around the first batch's channel means: no cancellation when mean >> std
            self.shift = _per_channel(x, torch.sum) / n
        d = torch.sub(x, self.shift[:, None], out=scratch)
        total = _per_channel(d, torch.sum).double()
        squares = _per_channel(d.square_(), torch.sum).double()
        batch_mean = self.shift.double() + total / n
        batch_m2 = (squares - total * total / n).clamp_min(0)
        count = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / count)
        self.m2 += batch_m2 + delta.square() * (self.count * n / count)
        self.count = count
        low_batch, high_batch = _per_channel(x, torch.amin), _per_channel(x, torch.amax)
        self.min = torch.minimum(self.min, low_batch.double())
        self.max = torch.maximum(self.max, high_batch.double())
        sample = x[:: max(1, math.ceil(x.numel() / _HISTOGRAM_SAMPLE))]
        low, high = float(self.edges[0]), float(self.edges[-1])
        self.histogram += torch.histc(sample, bins=len(self.histogram), min=low, max=high).double()
        self.sampled += sample.numel()
        if float(low_batch.min()) < low or float(high_batch.max()) > high:  # else nothing can fall outside
            self.below += int((sample < low).sum())
            self.above += int((sample > high).sum())

    def result(self, name: str) -> ChannelStats:
        cpu = lambda t: t.cpu()  # noqa: E731
        variance = self.m2 / max(self.count - 1, 1)
        saturation = self.saturated / self.count if self.bounds is not None else torch.full_like(self.mean, math.nan)
        assert self.example is not None
        return ChannelStats(
            name, self.count, cpu(self.mean), cpu(variance.sqrt()), cpu(self.min), cpu(self.max),
            cpu(self.zeros / self.count), cpu(saturation), cpu(self.histogram), self.edges, self.below, self.above,
            self.sampled, self.example,
        )  # fmt: skip


class _TopK:
    """The running top ``k`` spatial maxima of each channel, with the image position and the argmax unit.

    Each batch costs one max-reduction of its maps; the argmax is looked up only for the maps that
    enter the top ``k`` (at most ``C × k`` of them), not for every image.
    """

    def __init__(self, channels: Tensor, count: int, k: int, device: torch.device) -> None:
        self.channels = channels.to(device)
        self.every = torch.equal(channels, torch.arange(count))  # every channel reported: no copy of the maps
        self.k = k
        shape = (len(channels), 0)
        self.scores = torch.empty(shape, device=device)
        self.indices = torch.empty(shape, dtype=torch.long, device=device)
        self.positions = torch.empty((*shape, 2), dtype=torch.long, device=device)

    def add(self, output: Tensor, offset: int) -> None:
        n, _, h, w = output.shape
        maps = (output if self.every else output[:, self.channels]).reshape(n, len(self.channels), h * w)
        scores = torch.cat([self.scores, maps.amax(2).float().T], 1)  # (C, kept + N)
        keep = scores.topk(min(self.k, scores.shape[1]), dim=1).indices  # (C, k) sorted, descending
        kept, fresh = self.scores.shape[1], keep >= self.scores.shape[1]
        column = torch.arange(len(self.channels), device=output.device)[:, None].expand_as(keep)
        where = maps[(keep - kept).clamp_min(0), column].argmax(2)  # (C, k) argmax, used where the map is fresh
        positions, indices = torch.stack([where // w, where % w], 2), keep - kept + offset
        if kept:  # entries kept from earlier batches keep their image and unit
            earlier = keep.clamp_max(kept - 1)
            positions = torch.where(
                fresh[..., None], positions, self.positions.gather(1, earlier[..., None].expand(-1, -1, 2))
            )
            indices = torch.where(fresh, indices, self.indices.gather(1, earlier))
        self.scores, self.indices, self.positions = scores.gather(1, keep), indices, positions

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.scores, self.indices, self.positions


def _per_channel(x: Tensor, reduce: Any) -> Tensor:
    """``reduce`` (sum, amin, amax) of ``(N, C, P)`` over images and positions, the contiguous axis first (faster)."""
    return reduce(reduce(x, 2), 0)


def _channels(channels: Sequence[int] | Tensor | None, count: int) -> Tensor:
    if channels is None:
        return torch.arange(count)
    chosen = torch.as_tensor(channels, dtype=torch.long).flatten()
    if chosen.numel() == 0 or chosen.min() < 0 or chosen.max() >= count:
        raise ValueError(f"channels must be in [0, {count}), got {chosen.tolist()}")
    return chosen


def _batch_count(data: Any, batch_size: int) -> int | None:
    size = dataset_size(data)
    if size is None:
        return None
    per_batch = data.batch_size if hasattr(data, "batch_size") and data.batch_size else batch_size
    return math.ceil(size / per_batch)


def _patches(
    model: nn.Module,
    data: Any,
    layer: str,
    field: ReceptiveField,
    channels: Tensor,
    indices: Tensor,
    positions: Tensor,
    project: bool,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Crop each top unit's receptive field out of its image (and out of its DeconvNet projection)."""
    c, k = indices.shape
    images = fetch(data, indices.reshape(-1).tolist()).float()  # (C·k, C_in, H, W)
    rows, cols = positions[..., 0].reshape(-1), positions[..., 1].reshape(-1)
    projected = None
    if project:
        units = torch.stack([channels.repeat_interleave(k), rows, cols], 1)
        projected = field.crop(deconv_project(model, images, layer, units), rows, cols)[0]
    patches, inside, boxes = field.crop(images, rows, cols)
    tile_h, tile_w = patches.shape[-2:]
    shape = (c, k, images.shape[1], tile_h, tile_w)
    return (
        patches.reshape(shape),
        projected.reshape(shape) if projected is not None else None,
        inside.reshape(c, k, tile_h, tile_w),
        boxes.reshape(c, k, 4),
    )
