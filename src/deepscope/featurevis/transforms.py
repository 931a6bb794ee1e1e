"""Transformation robustness: small random pads, shifts, scalings and rotations applied before each step.

Olah et al. (2017, §Transformation robustness): an image that still excites the unit after being
jittered, scaled and rotated a little is one the unit really responds to, not an adversarial
pattern. A transform is a callable ``(images, generator) -> images``; every random choice is drawn
from the ``torch.Generator`` passed in (on the CPU, so results do not depend on the device), and
all images of a batch get the same draw. :data:`STANDARD` is Lucid's published recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["STANDARD", "Transform", "compose", "jitter", "pad", "random_rotate", "random_scale", "resolve"]

Transform = Callable[[Tensor, torch.Generator], Tensor]


def _choice(options: Sequence[float], generator: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=generator))])


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels of a constant ``value`` (grey: the unit sees a frame, not a border)."""

    def apply(x: Tensor, _generator: torch.Generator) -> Tensor:
        return F.pad(x, (width, width, width, width), value=value)

    return apply


def jitter(shift: int) -> Transform:
    """Crop ``shift`` pixels off in total, at a random offset: a random translation by up to ``shift``."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        dy, dx = (int(v) for v in torch.randint(shift + 1, (2,), generator=generator))
        return x[..., dy : x.shape[-2] - shift + dy, dx : x.shape[-1] - shift + dx]

    return apply


def random_scale(factors: Sequence[float]) -> Transform:
    """Resize by a factor drawn from ``factors`` (bilinear)."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        factor = _choice(factors, generator)
        size = (max(1, round(x.shape[-2] * factor)), max(1, round(x.shape[-1] * factor)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return apply


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle drawn from ``degrees`` (bilinear; the corners are filled by the border)."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        angle = math.radians(_choice(degrees, generator))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        for transform in transforms:
            x = transform(x, generator)
        return x

    return apply


STANDARD = compose(
    [
        pad(12),
        jitter(8),
        random_scale([1 + (i - 5) / 50 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]
)
"""Lucid's ``standard_transforms``: pad 12, jitter 8, scale 0.9–1.1, rotate −10°…10° (0° more often), jitter 4."""


def resolve(transforms: str | Transform | Sequence[Transform] | None) -> Transform | None:
    """``"standard"``, ``"none"``/None, one transform or a list of them."""
    if transforms is None or transforms == "none":
        return None
    if transforms == "standard":
        return STANDARD
    if isinstance(transforms, str):
        raise ValueError(f"unknown transforms {transforms!r}; valid: 'standard', 'none', or transform callables")
    if callable(transforms):
        return transforms
    return compose(list(transforms))
