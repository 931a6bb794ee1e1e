"""Exact receptive fields: which input pixels a unit of a spatial layer can see, computed from the network.

The receptive field of unit ``(i, j)`` of a layer is the set of input pixels its value depends on
through the network's structure (not through its current weights). deepscope measures it rather
than guessing it from layer names: on a float64 copy of the model whose convolution and linear
weights are averaging filters (``1 / fan_in``) and whose biases are zero, with normalisation layers
made the identity and max-pooling replaced by average pooling over the same windows, every path
from an input pixel to the unit carries a positive gradient, so the support of ``∂unit/∂input``
on an all-ones input is exactly the receptive field — padding, stride, dilation, pooling and
branches (residual additions, concatenations) included. The user's model is not touched.

Paths through global pooling (the squeeze-and-excitation gates of MobileNetV3, EfficientNet and
RegNetY, global context blocks) are left out: through them every unit depends on every pixel,
so counting them would make every field the whole image. The field reported is the local window
the unit's features are computed from; the gates only rescale them.

Convolutional geometry is translation-equivariant: a field's size, the jump between neighbouring
units and the offset of unit ``(0, 0)`` describe every unit, and :meth:`ReceptiveField.box` places
any unit, clipped to the image. They are read from the edges the canvas does not clip (the ends of
units 0 and 1, the start of the last unit), so a canvas about half the field's size is enough; the
canvas grows, doubling within a memory limit, until then. The result is checked against every
measured unit, and a layer whose geometry is not a regular grid raises.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    >>> rf = receptive_field(net, "2", (1, 16, 16))
    >>> rf.size, rf.jump, rf.start
    ((8, 8), (2, 2), (-1, -1))
    >>> rf.box(0, 0, (16, 16))  # (top, left, bottom, right), bottom/right exclusive
    (0, 0, 7, 7)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deepscope._forward import forward_until
from deepscope._model_copy import model_copy
from deepscope.layers import LayerSpec, resolve_layer

__all__ = ["ReceptiveField", "receptive_field"]

_MAX_CANVAS = 4096  # the largest input side tried when a unit's field does not fit
_MAX_PROBE_BYTES = 4 * 2**30  # the memory one measurement may take (float64 activations kept for the backward)


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field geometry of a spatial layer: unit ``(i, j)`` sees rows ``start + i·jump`` onwards.

    Attributes:
        layer: the layer's dotted name.
        size: ``(height, width)`` of one unit's field in input pixels (before clipping to the image).
        jump: input pixels between neighbouring units (the accumulated stride).
        start: input coordinates of the top-left corner of unit ``(0, 0)``'s field; negative when it
            reaches into the padding.
    """

    layer: str
    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]

    def box(self, i: int, j: int, image_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of unit ``(i, j)``'s field (bottom/right exclusive), clipped to the image."""
        top, left = self.start[0] + i * self.jump[0], self.start[1] + j * self.jump[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if image_size is not None:
            top, left = max(top, 0), max(left, 0)
            bottom, right = min(bottom, image_size[0]), min(right, image_size[1])
        return top, left, bottom, right

    def crop(self, images: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cut the field of unit ``(rows[m], cols[m])`` out of ``images[m]`` for every ``m``, in one gather.

        Returns ``tiles`` ``(M, C, h, w)`` (zeros where the field leaves the image), ``inside``
        ``(M, h, w)`` and the clipped ``boxes`` ``(M, 4)`` as :meth:`box` gives them. A tile is the
        field's size, or the image's side where the field is larger (then it starts at the clipped edge).
        """
        height, width = images.shape[-2:]
        vertical = _span(rows.long().cpu(), self.start[0], self.jump[0], self.size[0], height)
        horizontal = _span(cols.long().cpu(), self.start[1], self.jump[1], self.size[1], width)
        (ys, inside_y, top, bottom), (xs, inside_x, left, right) = vertical, horizontal
        which = torch.arange(len(images))[:, None, None]
        tiles = images.cpu()[which, :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)  # (M, C, h, w)
        inside = inside_y[:, :, None] & inside_x[:, None, :]
        return tiles.where(inside[:, None], 0), inside, torch.stack([top, left, bottom, right], 1)


def _span(units: Tensor, start: int, jump: int, size: int, side: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Along one axis: each unit's tile coordinates in the image (clamped), which lie inside, and its clipped extent."""
    first = start + units * jump
    low, high = first.clamp_min(0), (first + size).clamp_max(side)
    length = min(size, side)
    coords = (first if length == size else low)[:, None] + torch.arange(length)
    inside = (coords >= low[:, None]) & (coords < high[:, None])
    return coords.clamp(0, side - 1), inside, low, high


def receptive_field(model: nn.Module, layer: LayerSpec, input_shape: Sequence[int]) -> ReceptiveField:
    """Measure the receptive field of ``layer`` (a module with ``(N, C, H, W)`` output) for inputs ``(C, H, W)``.

    Args:
        model: the network (not modified: the measurement runs on a float64 copy).
        layer: dotted name or module of a layer with a spatial output.
        input_shape: ``(C, H, W)`` of one input; the canvas grows beyond it when a unit's field is larger.

    Raises:
        ValueError: the layer's output is not a spatial map, or its geometry is not a regular grid.
    """
    name, _ = resolve_layer(model, layer)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    probe = _geometry_copy(model)
    target = probe.get_submodule(name)
    channels, height, width = (int(v) for v in input_shape)
    canvas = (height, width)
    while True:
        try:
            grid, probe_bytes = _grid(probe, target, (channels, *canvas))
        except RuntimeError as error:  # e.g. a torch.export graph exported for one input size
            if canvas == (height, width):
                raise
            first = str(error).strip().splitlines()[0]
            raise ValueError(
                f"measuring the receptive field of {name!r} needs a {canvas[0]}×{canvas[1]} canvas, larger than the "
                f"{height}×{width} input, and the model refused it ({first}); a torch.export graph must be exported "
                "with a dynamic height and width"
            ) from error
        if probe_bytes > _MAX_PROBE_BYTES:
            raise _too_large(name, canvas, probe_bytes)
        field = _field_on_canvas(probe, target, name, (channels, *canvas), grid)
        if field is not None:
            return field
        larger = (min(2 * canvas[0] + 1, _MAX_CANVAS), min(2 * canvas[1] + 1, _MAX_CANVAS))
        needed = probe_bytes * larger[0] * larger[1] / (canvas[0] * canvas[1])
        if larger == canvas:
            raise ValueError(f"the receptive field of {name!r} is wider than the largest canvas, {_MAX_CANVAS} px")
        if needed > _MAX_PROBE_BYTES:
            raise _too_large(name, larger, needed, fits=canvas)
        canvas = larger


def _field_on_canvas(
    probe: nn.Module, target: nn.Module, name: str, shape: tuple[int, int, int], grid: tuple[int, int]
) -> ReceptiveField | None:
    """The field read from the edges the canvas does not clip, or ``None`` when the canvas is too small.

    Unit 0's and unit 1's bottom (right) edges give the jump and the end of unit 0's field; the last
    unit's top (left) edge gives the start. A canvas about half the field's size is then enough; the
    boxes of those units and of the centre unit, predicted from the result, must match the measured ones.
    """
    canvas = shape[1:]
    center = (grid[0] // 2, grid[1] // 2)
    measured = {unit: _measured_box(probe, target, shape, unit) for unit in [center, (0, 0)]}
    center_fits = all(measured[center][a] > 0 and measured[center][a + 2] < canvas[a] for a in (0, 1))
    if grid[0] < 2 or grid[1] < 2:
        if center_fits:
            raise ValueError(f"layer {name!r} has a {grid[0]}×{grid[1]} output: no grid of units to place")
        return None
    last = (grid[0] - 1, grid[1] - 1)
    for unit in [(1, 1), last]:
        measured[unit] = _measured_box(probe, target, shape, unit)
    first_end, second_end, last_start = measured[(0, 0)][2:], measured[(1, 1)][2:], measured[last][:2]
    jump = (second_end[0] - first_end[0], second_end[1] - first_end[1])
    start = (last_start[0] - last[0] * jump[0], last_start[1] - last[1] * jump[1])
    field = ReceptiveField(name, (first_end[0] - start[0], first_end[1] - start[1]), jump, start)
    edges_seen = all(second_end[a] < canvas[a] and last_start[a] > 0 for a in (0, 1))
    mismatch = next((unit for unit, box in measured.items() if not _agrees(field, unit, box, canvas, last)), None)
    if edges_seen and mismatch is None:
        return field
    if not center_fits:
        return None  # a clipped edge misled the reading: a larger canvas shows it
    # on a regular grid, a centre unit whose field fits leaves every edge read above unclipped
    unit = mismatch or center
    raise ValueError(
        f"layer {name!r} does not see its input on a regular grid (unit {unit} sees {measured[unit]}, the grid "
        f"predicts {field.box(*unit, canvas)}); receptive fields are defined for convolutional stacks"
    )


def _agrees(
    field: ReceptiveField,
    unit: tuple[int, int],
    box: tuple[int, int, int, int],
    canvas: tuple[int, int],
    last: tuple[int, int],
) -> bool:
    """Whether ``unit``'s measured box is the one ``field`` predicts; only its start for the last unit.

    The last unit's field may end early: a strided layer that does not tile the canvas exactly never
    sees its last pixels (SqueezeNet, Inception on even sizes).
    """
    predicted = field.box(*unit, canvas)
    return predicted[:2] == box[:2] if unit == last else predicted == box


def _too_large(name: str, canvas: tuple[int, int], needed: float, fits: tuple[int, int] | None = None) -> ValueError:
    cost = f"a {canvas[0]}×{canvas[1]} canvas would take about {_size(needed)} (the limit is {_size(_MAX_PROBE_BYTES)})"
    if fits is None:
        return ValueError(
            f"cannot measure the receptive field of {name!r}: {cost}; pass a smaller input_shape (the canvas "
            "grows by itself when a field is wider than the input)"
        )
    return ValueError(
        f"the receptive field of {name!r} is wider than the {fits[0]}×{fits[1]} canvas it was measured on, and "
        f"{cost}; an earlier layer has a narrower field"
    )


_NORMALISATIONS = frozenset({"batch_norm", "group_norm", "layer_norm", "instance_norm", "rms_norm"})


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm"})


class _GeometryMode(TorchFunctionMode):
    """Runs the probe copy so that gradients trace the network's local geometry, and counts the memory used.

    Max-pooling becomes average pooling over the same windows, so every position of a window gets
    gradient. Normalisation functions become the identity: they would make values negative, and
    ReLUs would cut paths. Global pooling (every spatial position reduced to one) is detached:
    the squeeze-and-excitation gates it feeds would otherwise connect every unit to every pixel.
    ``elements`` counts the values the forward pass produced (what the backward keeps, roughly).
    """

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = _function_name(func)
        if name in _NORMALISATIONS:
            return args[0]
        if name.startswith("max_pool"):
            out, asked = _average_pool(*args, **kwargs)
            with_indices = asked or name.endswith("with_indices")
        elif name.startswith("adaptive_max_pool"):
            x = args[0]
            out = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[x.ndim - 2](x, args[1])
            with_indices = name.endswith("with_indices") or _returns_pair(func)  # aten's adaptive_max_pool2d is a pair
        else:
            return self._counted(func(*args, **kwargs), name, args)
        out = self._counted(out, name, args)
        return (out, torch.zeros_like(out, dtype=torch.long)) if with_indices else out

    def _counted(self, out: Any, name: str, args: Sequence[Any]) -> Any:
        if _is_global_pool(name, args, out):
            out = out.detach()
        if isinstance(out, Tensor):
            self.elements += out.numel()
        return out


def _function_name(func: Any) -> str:
    """``max_pool2d`` for ``F.max_pool2d`` and for ``aten.max_pool2d.default`` (what a ``torch.export`` graph calls)."""
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet if packet is not None else func, "__name__", "")


def _returns_pair(func: Any) -> bool:
    schema = getattr(func, "_schema", None)  # aten operators only
    return schema is not None and len(schema.returns) == 2


def _is_global_pool(name: str, args: Sequence[Any], out: Any) -> bool:
    """Whether ``out`` reduces every spatial position of a ``(N, C, H, W)`` input to one value per channel."""
    x = args[0] if args else None
    if not (isinstance(out, Tensor) and isinstance(x, Tensor) and x.ndim == 4 and x.shape[2] * x.shape[3] > 1):
        return False
    if not (name.startswith("adaptive_") or name in _REDUCTIONS):
        return False
    return out.numel() <= x.shape[0] * x.shape[1]


def _average_pool(
    x: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> tuple[Tensor, bool]:
    """Average pooling over the max-pooling's windows, and whether the call asked for indices too."""
    if any(d != 1 for d in _tuple(dilation)):
        raise ValueError("receptive fields through dilated max-pooling are not supported")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.ndim - 2]
    out = pool(x, kernel_size, stride if stride else kernel_size, padding, ceil_mode, count_include_pad=False)
    return out, bool(return_indices)


def _tuple(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),)


def _geometry_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode: averaging weights, zero biases, identity normalisation statistics."""
    probe = model_copy(model).double().eval()
    with torch.no_grad():
        for module in probe.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "weight" and parameter.ndim >= 2:
                    parameter.fill_(1.0 / parameter[0].numel())
                elif name == "weight":
                    parameter.fill_(1.0)
                else:
                    parameter.zero_()
            for name, buffer in module.named_buffers(recurse=False):
                if name == "running_mean":
                    buffer.zero_()
                elif name == "running_var":
                    buffer.fill_(1.0)
    for parameter in probe.parameters():
        parameter.requires_grad_(False)
    return probe


def _layer_output(probe: nn.Module, target: nn.Module, x: Tensor, mode: _GeometryMode | None = None) -> Tensor:
    with mode or _GeometryMode():
        return forward_until(probe, {"layer": target}, x)["layer"]


def _grid(probe: nn.Module, target: nn.Module, shape: tuple[int, int, int]) -> tuple[tuple[int, int], int]:
    """The layer's output grid on a canvas of ``shape``, and the bytes a measurement on it takes (estimated)."""
    mode = _GeometryMode()
    with torch.no_grad():
        output = _layer_output(probe, target, torch.ones(1, *shape, dtype=torch.float64), mode)
    if output.ndim != 4:
        raise ValueError(f"receptive fields need a spatial layer output (N, C, H, W), got {tuple(output.shape)}")
    return (int(output.shape[2]), int(output.shape[3])), 8 * mode.elements


def _measured_box(
    probe: nn.Module, target: nn.Module, shape: tuple[int, int, int], unit: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The clipped box of input pixels with a non-zero gradient of unit ``(0, :, i, j)`` (all channels summed)."""
    x = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        output = _layer_output(probe, target, x)
        (grad,) = torch.autograd.grad(output[0, :, unit[0], unit[1]].sum(), x)
    support = grad[0].abs().sum(0) > 0  # (H, W)
    rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
    if not len(rows):
        raise ValueError("no input pixel reaches the unit: is the layer connected to the input?")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
