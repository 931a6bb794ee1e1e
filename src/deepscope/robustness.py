"""Invariance curves (Zeiler & Fergus 2014, Fig. 5): how far features move when the image is shifted, scaled or turned.

For each value of the transform, every image is resampled (bilinear, ``torch.nn.functional.grid_sample``,
zeros outside; the identity — translation 0, scale 1, rotation by a multiple of 360° — returns the
image itself) and the model runs once on the whole batch of transformed images. Recorded per image
and value: the Euclidean distance between the flattened outputs of each chosen layer on the
transformed and on the original image, the probability of the true class and the predicted class.
Early layers move a lot with small shifts; deep layers, and the prediction, should move much less
(except under rotation, which CNNs are not built to ignore).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.guard import preserved
from deepscope.hooks import HookSet
from deepscope.layers import LayerSpec, guess_spatial_layer, is_layer, model_device, resolve_layers
from deepscope.repro import library_versions

__all__ = ["InvarianceCurves", "Transform", "invariance", "transform_images"]

Transform = Literal["translation", "scale", "rotation"]
_IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}


@dataclass(frozen=True, slots=True)
class InvarianceCurves:
    """Feature distance, true-class probability and prediction of each image against the transform's parameter.

    Attributes:
        transform: ``"translation"`` (pixels, right and down), ``"scale"`` (factor) or ``"rotation"`` (degrees).
        values: ``(V,)`` the parameter values.
        distances: per layer, ``(V, N)`` Euclidean distance of the flattened output to the untransformed one.
        probability: ``(V, N)`` softmax probability of ``labels``.
        predicted: ``(V, N)`` the predicted class.
        labels: ``(N,)`` the true classes (the predictions on the untransformed images when not given).
    """

    transform: Transform
    values: Tensor
    distances: dict[str, Tensor]
    probability: Tensor
    predicted: Tensor
    labels: Tensor
    class_names: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)

    def save(self, out_png: str | Path) -> Path:
        """Draw the curves (one panel per layer, then the probability) into ``out_png``."""
        from deepscope.plots import invariance_figure  # the presentation layer, loaded to draw

        return invariance_figure(
            self.transform, self.values.numpy(), {k: v.numpy() for k, v in self.distances.items()},
            self.probability.numpy(), self.predicted.numpy(), self.labels.numpy(), Path(out_png),
            class_names=self.class_names,
        )  # fmt: skip

    def _repr_png_(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.save(Path(tmp) / "invariance.png").read_bytes()


def transform_images(images: Tensor, transform: Transform, value: float) -> Tensor:
    """Images ``(N, C, H, W)`` shifted by ``value`` pixels (right, down), scaled by ``value`` or turned ``value``°."""
    if transform not in _IDENTITY:
        raise ValueError(f"transform must be 'translation', 'scale' or 'rotation', got {transform!r}")
    if transform == "rotation":
        value = math.remainder(value, 360.0)
    if value == _IDENTITY[transform]:
        return images
    n, _, height, width = images.shape
    theta = torch.zeros(2, 3, dtype=torch.float64)
    if transform == "translation":  # the sampling grid moves the other way, in normalised coordinates
        theta[0, 0] = theta[1, 1] = 1.0
        theta[0, 2], theta[1, 2] = -2 * value / width, -2 * value / height
    elif transform == "scale":
        if value <= 0:
            raise ValueError(f"scale factors must be > 0, got {value}")
        theta[0, 0] = theta[1, 1] = 1 / value
    else:
        angle = math.radians(value)
        cos, sin = math.cos(angle), math.sin(angle)
        theta[:2, :2] = torch.tensor([[cos, -sin * height / width], [sin * width / height, cos]])
    grid = F.affine_grid(
        theta.to(images.dtype).expand(n, 2, 3).to(images.device), list(images.shape), align_corners=False
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def invariance(
    model: nn.Module,
    images: Tensor,
    transform: Transform = "translation",
    values: Sequence[float] | Tensor | None = None,
    layers: Sequence[LayerSpec] | None = None,
    *,
    labels: Sequence[int] | Tensor | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 256,
) -> InvarianceCurves:
    """The invariance curves of ``images`` under ``transform`` (see the module docstring).

    Args:
        model: a classifier (left unchanged).
        images: ``(N, C, H, W)`` images.
        transform: ``"translation"``, ``"scale"`` or ``"rotation"``.
        values: the parameter values (default: shifts of ±¼ of the image, scales 0.6–1.4, rotations 0–360° by 15°).
        layers: the layers whose features are compared (default: the first convolution and the last
            layer with a spatial output, as the paper's layers 1 and 7 of an early and a late layer).
        labels: the true classes (default: the predictions on the untransformed images).
        class_names: names for the figure.
        batch_size: transformed images per forward pass.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"invariance needs a batch of images (N, C, H, W) of floats, got "
            f"{getattr(images, 'shape', type(images).__name__)}"
        )
    grid = (
        _default_values(transform, images.shape[-1]) if values is None else torch.as_tensor(values, dtype=torch.float64)
    )
    watched = resolve_layers(model, list(layers) if layers else _default_layers(model, images[:1]))
    device = model_device(model)
    x = images.detach().to(device)
    with preserved(model, grads=False), torch.inference_mode():
        model.eval()
        base_features, base_logits = _features(model, watched, x, batch_size)
        truth = base_logits.argmax(1) if labels is None else torch.as_tensor(labels, device=device).long()
        if truth.shape != (x.shape[0],):
            raise ValueError(f"labels must give one class per image ({x.shape[0]}), got shape {tuple(truth.shape)}")
        distances = {name: [] for name in watched}
        probability, predicted = [], []
        for value in grid.tolist():
            features, logits = _features(model, watched, transform_images(x, transform, value), batch_size)
            for name in watched:
                distances[name].append((features[name] - base_features[name]).norm(dim=1))
            probability.append(logits.softmax(1).gather(1, truth[:, None])[:, 0])
            predicted.append(logits.argmax(1))
    return InvarianceCurves(
        transform, grid.float(), {name: torch.stack(d).cpu() for name, d in distances.items()},
        torch.stack(probability).cpu(), torch.stack(predicted).cpu(), truth.cpu(),
        tuple(class_names or ()), library_versions(),
    )  # fmt: skip


def _default_layers(model: nn.Module, example: Tensor) -> list[str]:
    """The first convolution and the last spatial layer (empty when the model has no convolution)."""
    first = next((name for name, module in model.named_modules() if is_layer(module, nn.Conv2d)), None)
    if first is None:
        raise ValueError("the model has no nn.Conv2d: pass layers=[...] to compare their features")
    last = guess_spatial_layer(model, example)
    return [first] if last == first else [first, last]


def _default_values(transform: Transform, size: int) -> Tensor:
    if transform == "translation":
        return torch.linspace(-size / 4, size / 4, 13, dtype=torch.float64).round()
    if transform == "scale":
        return torch.linspace(0.6, 1.4, 9, dtype=torch.float64)
    if transform == "rotation":
        return torch.arange(0, 361, 15, dtype=torch.float64)
    raise ValueError(f"transform must be 'translation', 'scale' or 'rotation', got {transform!r}")


def _features(
    model: nn.Module, layers: dict[str, nn.Module], x: Tensor, batch_size: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Flattened outputs of ``layers`` and the logits, batch by batch."""
    features: dict[str, list[Tensor]] = {name: [] for name in layers}
    logits = []
    with HookSet() as hooks:
        latest = hooks.capture_outputs(layers, transform=lambda t: t.flatten(1).float())
        for start in range(0, x.shape[0], batch_size):
            output = model(x[start : start + batch_size])
            logits.append(output.reshape(output.shape[0], -1).float())
            for name in layers:
                features[name].append(latest.pop(name))
    return {name: torch.cat(parts) for name, parts in features.items()}, torch.cat(logits)
