"""The occlusion study of Zeiler & Fergus (2014, Fig. 7): is the network looking at the object, or its surroundings?

A grey square slides over the image. For each of its positions the study records (b) the total
activation of the layer's strongest feature map — the one with the largest total activation on the
unoccluded image —, (d) the probability of the correct class and (e) the most probable class; (c)
is that feature map's strongest unit on the unoccluded image projected back to pixels with the
DeconvNet rules, and (a) the image with the square where it hurts the correct class most. The
sliding and scoring is the attribution engine's occlusion method (batched, ``inference_mode``);
the projection is :func:`deepscope.deconv.deconv_project`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from deepscope._forward import forward_until
from deepscope.attribution import explain
from deepscope.deconv import deconv_project
from deepscope.guard import preserved
from deepscope.layers import LayerSpec, model_device, resolve_layer
from deepscope.repro import library_versions

__all__ = ["OcclusionStudy", "occlusion_study"]


@dataclass(frozen=True, slots=True)
class OcclusionStudy:
    """The five panels of Fig. 7 for one image (tensors on the CPU; grid ``(gh, gw)`` over square positions).

    Attributes:
        image: ``(C, H, W)`` the input.
        layer: the layer whose strongest feature map is tracked.
        channel: that feature map's index.
        activation: ``(gh, gw)`` its total activation with the square at each position (panel b).
        projection: ``(C, H, W)`` the DeconvNet projection of its strongest unit, unoccluded (panel c).
        probability: ``(gh, gw)`` the probability of ``target`` (panel d).
        top_class: ``(gh, gw)`` the most probable class (panel e).
        target: the correct class.
        worst: ``(row, column)`` in pixels of the square that lowers the correct class most (panel a).
        window, stride: the square's size and step in pixels.
        class_names: display names (``"class k"`` when not given).
    """

    image: Tensor
    layer: str
    channel: int
    activation: Tensor
    projection: Tensor
    probability: Tensor
    top_class: Tensor
    target: int
    worst: tuple[int, int]
    window: int
    stride: int
    class_names: tuple[str, ...]
    baseline: float
    versions: dict[str, str] = field(default_factory=dict)

    def save(self, out_png: str | Path) -> Path:
        """Draw the five panels into ``out_png``."""
        from deepscope.plots import occlusion_figure  # the presentation layer, loaded to draw

        return occlusion_figure(
            self.image.numpy(), self.projection.numpy(), self.activation.numpy(), self.probability.numpy(),
            self.top_class.numpy(), Path(out_png), worst=self.worst, window=self.window, stride=self.stride,
            channel=self.channel, layer=self.layer, target=self.target, class_names=self.class_names,
            baseline=self.baseline,
        )  # fmt: skip

    def _repr_png_(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.save(Path(tmp) / "occlusion.png").read_bytes()


def occlusion_study(
    model: nn.Module,
    image: Tensor,
    layer: LayerSpec,
    *,
    target: int | None = None,
    window: int = 16,
    stride: int = 8,
    baseline: float = 0.5,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> OcclusionStudy:
    """Slide a ``baseline``-valued square over ``image`` ``(C, H, W)`` and record the panels of Fig. 7.

    Args:
        model: a classifier (left unchanged).
        image: one image ``(C, H, W)`` (a batch of one is accepted).
        layer: the spatial layer whose strongest feature map is tracked.
        target: the correct class (default: the predicted class of the unoccluded image).
        window: side of the square in pixels.
        stride: step between square positions in pixels (at most ``window``).
        baseline: the square's value (0.5 is mid-grey for images in [0, 1]).
        class_names: names for the labelled class map.
        batch_size: occluded images per forward pass.
    """
    x = image[None] if image.ndim == 3 else image
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"occlusion_study takes one image (C, H, W), got {tuple(image.shape)}")
    name, module = resolve_layer(model, layer)
    result = explain(
        model, x, "occlusion", target=target, window=window, stride=stride, baseline=baseline, score="probability",
        batch_size=batch_size, extras=("top_class",), activation_layer=name,
    )  # fmt: skip
    extras = result.extras
    channel = int(extras["activation_channel"][0])
    probability = extras["score"][0].cpu()
    gw = probability.shape[1]
    flat = int(probability.argmin())
    worst = ((flat // gw) * stride, (flat % gw) * stride)
    projection = deconv_project(model, x, name, _strongest_unit(model, name, module, x, channel))[0].cpu()
    classes = _num_classes(model, x)
    names = tuple(class_names) if class_names is not None else tuple(f"class {k}" for k in range(classes))
    if len(names) != classes:
        raise ValueError(f"class_names has {len(names)} names for a model with {classes} outputs")
    return OcclusionStudy(
        x[0].detach().float().cpu(), name, channel, extras["activation"][0].cpu(), projection, probability,
        extras["top_class"][0].cpu(), int(result.target[0]), worst, window, stride, names, float(baseline),
        library_versions(),
    )  # fmt: skip


def _strongest_unit(model: nn.Module, name: str, module: nn.Module, x: Tensor, channel: int) -> Tensor:
    """``(1, 3)`` the channel and position of that feature map's maximum on the unoccluded image."""
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        maps = forward_until(model, {name: module}, x.to(model_device(model)))[name]
    position = int(maps[0, channel].argmax())
    return torch.tensor([[channel, position // maps.shape[-1], position % maps.shape[-1]]])


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        output = model(x.to(model_device(model)))
    return int(output.reshape(1, -1).shape[1])
