"""What a feature visualisation maximises: objectives on layer outputs, combined with ``+ − ×``.

Erhan et al. (2009), Olah et al. (2017, "Feature Visualization", Distill). An :class:`Objective`
maps the captured tensors of one forward pass — each needed layer's output under its dotted name,
the model output under :data:`OUTPUT` and the (untransformed) image under :data:`IMAGE` — to one
value per image of the batch, ``(B,)``, to be *maximised*. Objectives add, subtract and scale::

    channel("layer3", 5) - 1e-3 * total_variation()       # a regularised channel
    channel("layer4", 1) + 0.5 * diversity("layer3")      # several different images of one channel

Element ``i`` of a batch may target its own unit: ``channel("layer3", [0, 1, 2, 3])`` with a batch
of four gives one image per channel in a single optimisation (the channel atlas).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "IMAGE",
    "OUTPUT",
    "Objective",
    "channel",
    "class_logit",
    "direction",
    "diversity",
    "l1",
    "l2",
    "layer",
    "neuron",
    "total_variation",
]

IMAGE = "<image>"  # the parameterised image, before the robustness transforms
OUTPUT = "<output>"  # the model's output (logits)

Captured = Mapping[str, Tensor]


@dataclass(frozen=True)
class Objective:
    """A quantity to maximise, ``captured -> (B,)``, with the layers it reads and a readable description."""

    fn: Callable[[Captured], Tensor]
    layers: frozenset[str]
    description: str

    def __call__(self, captured: Captured) -> Tensor:
        """The objective of each image, ``(B,)``."""
        return self.fn(captured)

    def __add__(self, other: Objective | float) -> Objective:
        if not isinstance(other, Objective):
            return Objective(lambda c: self.fn(c) + other, self.layers, f"{self.description} + {other:g}")
        return Objective(
            lambda c: self.fn(c) + other.fn(c), self.layers | other.layers, f"{self.description} + {other.description}"
        )

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(lambda c: -self.fn(c), self.layers, f"-({self.description})")

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, Objective) or not isinstance(factor, (int, float)):
            raise TypeError(f"objectives scale by numbers, got {type(factor).__name__}")
        return Objective(lambda c: factor * self.fn(c), self.layers, f"{factor:g}·({self.description})")

    __rmul__ = __mul__


def _pick(out: Tensor, units: int | Sequence[int], what: str, source: str) -> Tensor:
    """``out[b, units[b]]`` for each image ``b``: one unit for the whole batch, or one per image.

    One unit is a plain slice (its backward is a copy into zeros, cheaper than the scatter of an index).

    Raises:
        ValueError: a unit that ``source`` does not have, or a number of units that is neither 1 nor the batch.
    """
    chosen = [units] if isinstance(units, int) else [int(u) for u in units]
    count, plural = out.shape[1], "classes" if what == "class" else f"{what}s"
    missing = [u for u in chosen if not 0 <= u < count]
    if missing:
        where = "the model output" if source == OUTPUT else repr(source)
        raise ValueError(f"{what} {missing[0]} does not exist: {where} has {count} {plural} (0 to {count - 1})")
    if len(chosen) not in (1, out.shape[0]):
        raise ValueError(f"{len(chosen)} {plural} for a batch of {out.shape[0]} images: give one, or one per image")
    if len(chosen) == 1:
        return out[:, chosen[0]]
    return out[torch.arange(out.shape[0], device=out.device), torch.as_tensor(chosen, device=out.device)]


def _output(captured: Captured, name: str) -> Tensor:
    out = captured[name]
    if out.ndim < 2:
        raise ValueError(f"{name!r} gives {tuple(out.shape)}: the objective needs channels (dim 1)")
    return out


def channel(layer_name: str, index: int | Sequence[int]) -> Objective:
    """The mean activation of channel ``index`` of ``layer_name`` over its positions (one per image, or a list)."""

    def fn(captured: Captured) -> Tensor:
        out = _output(captured, layer_name)
        maps = _pick(out, index, "channel", layer_name)  # (B, ...)
        return maps.flatten(1).mean(1) if maps.ndim > 1 else maps

    return Objective(fn, frozenset({layer_name}), f"channel {index} of {layer_name}")


def neuron(layer_name: str, index: int | Sequence[int], x: int | None = None, y: int | None = None) -> Objective:
    """The activation of channel ``index`` of ``layer_name`` at one position (default: the centre)."""

    def fn(captured: Captured) -> Tensor:
        out = _output(captured, layer_name)
        maps = _pick(out, index, "channel", layer_name)  # (B, H, W) or (B,)
        if maps.ndim == 1:
            return maps
        row = maps.shape[1] // 2 if y is None else y
        col = maps.shape[2] // 2 if x is None else x
        return maps[:, row, col]

    where = "the centre" if x is None and y is None else f"({y}, {x})"
    return Objective(fn, frozenset({layer_name}), f"neuron {index} of {layer_name} at {where}")


def layer(layer_name: str) -> Objective:
    """DeepDream: the mean squared activation of every unit of ``layer_name``."""
    return Objective(
        lambda c: _output(c, layer_name).flatten(1).square().mean(1),
        frozenset({layer_name}),
        f"DeepDream on {layer_name}",
    )


def class_logit(index: int | Sequence[int]) -> Objective:
    """The model output (pre-softmax logit) of class ``index``."""

    def fn(captured: Captured) -> Tensor:
        out = _output(captured, OUTPUT)
        return _pick(out, index, "class", OUTPUT)

    return Objective(fn, frozenset({OUTPUT}), f"logit of class {index}")


def direction(layer_name: str, vector: Tensor | Sequence[float]) -> Objective:
    """The mean over positions of the activation's dot product with ``vector`` (a direction in channel space)."""
    v = torch.as_tensor(vector, dtype=torch.float32).flatten()

    def fn(captured: Captured) -> Tensor:
        out = _output(captured, layer_name)
        if out.shape[1] != v.numel():
            raise ValueError(f"the direction has {v.numel()} values but {layer_name!r} has {out.shape[1]} channels")
        w = v.to(out.device, out.dtype).view(1, -1, *([1] * (out.ndim - 2)))
        return (out * w).sum(1).flatten(1).mean(1)

    return Objective(fn, frozenset({layer_name}), f"a direction in {layer_name}")


def diversity(layer_name: str) -> Objective:
    """Minus each image's mean cosine similarity of its Gram matrix to the other images' (needs a batch of 2+).

    Added to an objective, it pushes the batch's images apart in style (Olah et al. 2017, §Diversity).
    """

    def fn(captured: Captured) -> Tensor:
        out = _output(captured, layer_name)
        b, c = out.shape[:2]
        if b < 2:
            raise ValueError("diversity compares the images of a batch: use batch >= 2")
        flat = out.reshape(b, c, -1)
        gram = torch.nn.functional.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)  # (B, C·C)
        similarity = gram @ gram.T  # (B, B)
        return -(similarity.sum(1) - similarity.diagonal()) / (b - 1)

    return Objective(fn, frozenset({layer_name}), f"diversity of {layer_name}")


def _image(captured: Captured) -> Tensor:
    return captured[IMAGE]


def l1(target: float = 0.0) -> Objective:
    """The mean absolute deviation of the image from ``target`` (a penalty: subtract it)."""
    return Objective(lambda c: (_image(c) - target).abs().flatten(1).mean(1), frozenset(), "L1 of the image")


def l2(target: float = 0.0) -> Objective:
    """The root mean squared deviation of the image from ``target`` (a penalty: subtract it)."""
    return Objective(lambda c: (_image(c) - target).square().flatten(1).mean(1).sqrt(), frozenset(), "L2 of the image")


def total_variation() -> Objective:
    """The mean absolute difference between neighbouring pixels (a penalty: subtract it)."""

    def fn(captured: Captured) -> Tensor:
        x = _image(captured)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(fn, frozenset(), "total variation of the image")
