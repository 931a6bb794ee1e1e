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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
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
from deepscope.scale._shards import Shard
from deepscope.scale.backends import Coverage, Ray, resolve, run_whole

__all__ = ["ActivationStats", "ChannelStats", "TopActivations", "activations", "top_activations"]

_SATURATION_MARGIN = 0.01  # share of a bounded activation's range counted as "at the bound"
_HISTOGRAM_SAMPLE = 1 << 15  # about how many values of the first batch the histogram counts (whole inputs)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Per-channel statistics of one layer over a dataset, ``(C,)`` float64 tensors on the CPU.

    ``saturation`` is NaN for unbounded activations. ``histogram`` counts the layer's values in
    ``bins`` equal buckets between ``edges[0]`` and ``edges[-1]`` (the range of the first batch,
    widened by half on each side) on every ``stride``-th input of the data by position (the stride
    set from the first batch so that a batch gives about 32,768 values; every value for smaller
    outputs; ``sampled`` says how many), so batches and shards count the same inputs; ``below`` and
    ``above`` count the sampled values outside the range, so nothing is dropped unseen. Everything
    else is exact.
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
    coverage: Coverage | None = None  # which inputs the statistics count (all, unless Ray shards failed)

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
    coverage: Coverage | None = None  # which images were searched (all, unless Ray shards failed)


def activations(
    model: nn.Module,
    data: Any,
    layers: LayerSpec | Sequence[LayerSpec],
    *,
    batch_size: int = 256,
    bins: int = 50,
    example: int = 0,
    backend: str | Ray = "local",
    model_factory: Callable[[], nn.Module] | None = None,
) -> ActivationStats:
    """Stream ``data`` through ``model`` and summarise each channel of ``layers`` (see the module docstring).

    Args:
        model: the network (left unchanged).
        data: a tensor ``(N, ...)``, a dataset (items ``x`` or ``(x, label)``) or a ``DataLoader``.
        layers: dotted names or modules; channels are dim 1 of their outputs.
        batch_size: inputs per forward pass (a ``DataLoader`` keeps its own).
        bins: histogram buckets per layer.
        example: the position of the input whose feature maps are kept.
        backend: ``"local"`` (a stream in this process), or ``"ray"`` / :class:`deepscope.scale.Ray` (shards on
            Ray workers, the per-shard statistics merged: the same result to rounding; see ``result.coverage``).
        model_factory: with Ray, a function that builds the architecture on each worker (the weights are sent).
    """
    watched = resolve_layers(model, layers)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = None if resolve(backend) is None else _first_edges(model, watched, data, batch_size, bins)
    bounds = {name: activation_bounds(module) for name, module in watched.items()}
    settings = _ActivationSettings(tuple(watched), bounds, bins, batch_size, example, edges)
    partials, coverage = run_whole(
        partial(_activation_work, settings=settings), model, data, backend=backend, model_factory=model_factory,
        minimum=batch_size, label="activations",
    )  # fmt: skip
    running, seen = partials[0]
    for more, count in partials[1:]:
        for name in running:
            running[name].merge(more[name])
        seen += count
    if not seen:
        raise ValueError("data holds no input")
    if example >= seen or not any(moments.example is not None for moments in running.values()):
        raise ValueError(f"example={example} but the data holds {seen} inputs")
    stats = {name: running[name].result(name) for name in watched}
    params = {"batch_size": batch_size, "bins": bins, "example": example}
    return ActivationStats(stats, seen, params, library_versions(), replace(coverage, items=coverage.items or seen))


@dataclass(frozen=True, slots=True)
class _ActivationSettings:
    names: tuple[str, ...]
    bounds: dict[str, tuple[float, float] | None]
    bins: int
    batch_size: int
    example: int
    edges: (
        dict[str, tuple[Tensor, int]] | None
    )  # per layer: histogram edges and sampling stride (None: the first batch's)


def _first_edges(
    model: nn.Module, watched: dict[str, nn.Module], data: Any, batch_size: int, bins: int
) -> dict[str, tuple[Tensor, int]]:
    """The histogram edges of each layer (the first batch's range, widened by half) and its sampling stride.

    Fixed before the pass, so that every shard counts into the same buckets and samples the same inputs.
    """
    first = next(iter(batches(data, batch_size)), None)
    if first is None:
        return {}
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        outputs = forward_until(model, watched, first.to(model_device(model)))
    settings = _ActivationSettings(tuple(watched), {}, bins, batch_size, 0, None)
    for name, output in outputs.items():
        _check_channels(name, output)
    return {name: _edges(output, settings) for name, output in outputs.items()}


def _edges(output: Tensor, settings: _ActivationSettings) -> tuple[Tensor, int]:
    """A layer's histogram edges (the batch's range widened by half on each side) and sampling stride (inputs)."""
    low, high = float(output.min()), float(output.max())
    margin = 0.5 * (high - low) or 1.0
    stride = max(1, math.ceil(output.numel() / _HISTOGRAM_SAMPLE))
    return torch.linspace(low - margin, high + margin, settings.bins + 1, dtype=torch.float64), stride


def _activation_work(model: nn.Module, items: Any, shard: Shard, *, settings: _ActivationSettings) -> Any:
    """One shard's running moments per layer (on the CPU), and its number of inputs."""
    watched = resolve_layers(model, list(settings.names))
    device = model_device(model)
    running: dict[str, _Moments] = {}
    seen = shard.start
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        for batch in track(
            batches(items, settings.batch_size), "activations", total=_batch_count(items, settings.batch_size)
        ):
            outputs = forward_until(model, watched, batch.to(device))
            for name, output in outputs.items():
                _check_channels(name, output)
                if name not in running:
                    edges = settings.edges[name] if settings.edges is not None else _edges(output, settings)
                    running[name] = _Moments(output.shape[1], *edges, settings.bounds[name], output.device)
                moments = running[name]
                moments.add(output, seen)
                if seen <= settings.example < seen + output.shape[0]:
                    moments.example = output[settings.example - seen].detach().float().cpu().clone()
            seen += batch.shape[0]
            del outputs, output  # freed before the next forward pass allocates its own
    return {name: m.to_cpu() for name, m in running.items()}, seen - shard.start


def _check_channels(name: str, output: Tensor) -> None:
    if not output.is_floating_point() or output.ndim < 2:
        raise ValueError(f"layer {name!r} gives {tuple(output.shape)} {output.dtype}: no channels (dim 1)")


def top_activations(
    model: nn.Module,
    data: Any,
    layer: LayerSpec,
    channels: Sequence[int] | Tensor | None = None,
    k: int = 9,
    *,
    batch_size: int = 256,
    project: bool = True,
    backend: str | Ray = "local",
    model_factory: Callable[[], nn.Module] | None = None,
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
        backend: ``"local"``, or ``"ray"`` / :class:`deepscope.scale.Ray`: the per-shard top-k are merged (the same
            images, ties included); patches and projections are then cut here.
        model_factory: with Ray, a function that builds the architecture on each worker (the weights are sent).

    Raises:
        ValueError: the layer has no spatial output, ``k`` exceeds the number of images, or a channel is out of range.
    """
    name, _ = resolve_layer(model, layer)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    size = dataset_size(data)
    if size is not None and k > size:
        raise ValueError(f"k={k} is more than the {size} images of the data")
    work = partial(_top_work, name=name, channels=channels, k=k, batch_size=batch_size)
    partials, coverage = run_whole(
        work, model, data, backend=backend, model_factory=model_factory, minimum=batch_size, label="top activations"
    )
    best, seen = partials[0]
    for more, count in partials[1:]:
        best.merge(more)
        seen += count
    if best is None:
        raise ValueError("data holds no input")
    if k > seen:
        raise ValueError(f"k={k} is more than the {seen} images of the data")
    field = receptive_field(model, name, tuple(fetch(data, [0]).shape[1:]))
    scores, indices, positions = best.scores, best.indices, best.positions
    patches, projections, inside, boxes = _patches(model, data, name, field, best.channels, indices, positions, project)
    params = {"k": k, "batch_size": batch_size, "project": project}
    return TopActivations(
        name, best.channels, scores, indices, positions, boxes, patches, projections, inside, field, seen,
        params, library_versions(), replace(coverage, items=coverage.items or seen),
    )  # fmt: skip


def _top_work(
    model: nn.Module, items: Any, shard: Shard, *, name: str, channels: Any, k: int, batch_size: int
) -> tuple[_TopK | None, int]:
    """One shard's running top-k (on the CPU; dataset positions), and its number of images."""
    module = dict(model.named_modules())[name]
    device = model_device(model)
    best: _TopK | None = None
    seen = shard.start
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        for batch in track(batches(items, batch_size), "top activations", total=_batch_count(items, batch_size)):
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
    return (best.to_cpu() if best is not None else None), seen - shard.start


class _Moments:
    """Running per-channel moments of one layer (Chan et al.'s parallel update), extremes, counts and a histogram.

    Partial results merge exactly (counts, extremes, histogram) or to rounding (moments, in float64),
    whatever the batches or shards they came from: the histogram's edges and the inputs it samples
    (every ``stride``-th position of the data) are fixed before the pass.
    """

    def __init__(
        self, channels: int, edges: Tensor, stride: int, bounds: tuple[float, float] | None, device: torch.device
    ) -> None:
        zeros = torch.zeros(channels, dtype=torch.float64, device=device)
        self.count = 0
        self.mean, self.m2, self.zeros, self.saturated = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
        self.min = torch.full_like(zeros, math.inf)
        self.max = torch.full_like(zeros, -math.inf)
        self.bounds = bounds
        self.edges, self.stride = edges, stride
        self.histogram = torch.zeros(len(edges) - 1, dtype=torch.float64, device=device)
        self.below = self.above = self.sampled = 0
        self.shift: Tensor | None = None
        self.buffer: Tensor | None = None
        self.example: Tensor | None = None

    def add(self, output: Tensor, position: int) -> None:
        """Count a batch whose first input is at dataset ``position``."""
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
        self._combine(n, self.shift.double() + total / n, (squares - total * total / n).clamp_min(0))
        low_batch, high_batch = _per_channel(x, torch.amin), _per_channel(x, torch.amax)
        self.min = torch.minimum(self.min, low_batch.double())
        self.max = torch.maximum(self.max, high_batch.double())
        sample = x[(-position) % self.stride :: self.stride]  # the inputs at multiples of the stride
        low, high = float(self.edges[0]), float(self.edges[-1])
        self.histogram += torch.histc(sample, bins=len(self.histogram), min=low, max=high).double()
        self.sampled += sample.numel()
        if sample.numel() and (float(low_batch.min()) < low or float(high_batch.max()) > high):
            self.below += int((sample < low).sum())
            self.above += int((sample > high).sum())

    def _combine(self, n: int, mean: Tensor, m2: Tensor) -> None:
        """Chan et al.'s merge of another group's count, means and sums of squared deviations into these."""
        count = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / count)
        self.m2 += m2 + delta.square() * (self.count * n / count)
        self.count = count

    @torch.inference_mode()  # the running tensors were made in inference mode, and are updated in place
    def merge(self, other: _Moments) -> None:
        """Add another shard's statistics (taken with the same edges and stride) to these."""
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        self.zeros += other.zeros
        self.saturated += other.saturated
        self.min, self.max = torch.minimum(self.min, other.min), torch.maximum(self.max, other.max)
        self.histogram += other.histogram
        self.below, self.above, self.sampled = (
            self.below + other.below,
            self.above + other.above,
            self.sampled + other.sampled,
        )
        self.example = self.example if self.example is not None else other.example

    def to_cpu(self) -> _Moments:
        """These statistics on the CPU, without the scratch buffer (what a shard sends back)."""
        for name in ("mean", "m2", "zeros", "saturated", "min", "max", "histogram"):
            setattr(self, name, getattr(self, name).cpu())
        self.shift = self.buffer = None
        return self

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
    enter the top ``k`` (at most ``C × k`` of them), not for every image. Entries are kept by
    descending score, equal scores by ascending image position (a stable sort of earlier entries
    before later ones), so the result does not depend on how the data was cut into batches or shards.
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
        """Count a batch whose first image is at dataset position ``offset``."""
        n, _, h, w = output.shape
        maps = (output if self.every else output[:, self.channels]).reshape(n, len(self.channels), h * w)
        scores = torch.cat([self.scores, maps.amax(2).float().T], 1)  # (C, kept + N)
        keep = _best(scores, self.k)  # (C, k)
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

    def merge(self, other: _TopK) -> None:
        """Add another shard's top ``k`` (of later images) to this one."""
        scores = torch.cat([self.scores, other.scores], 1)
        keep = _best(scores, self.k)
        self.scores = scores.gather(1, keep)
        self.indices = torch.cat([self.indices, other.indices], 1).gather(1, keep)
        self.positions = torch.cat([self.positions, other.positions], 1).gather(1, keep[..., None].expand(-1, -1, 2))

    def to_cpu(self) -> _TopK:
        """This top-k on the CPU (what a shard sends back)."""
        self.channels, self.scores = self.channels.cpu(), self.scores.cpu()
        self.indices, self.positions = self.indices.cpu(), self.positions.cpu()
        return self


def _best(scores: Tensor, k: int) -> Tensor:
    """``(C, min(k, n))`` the columns of the ``k`` highest scores per row, descending; ties: the earlier column."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


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
