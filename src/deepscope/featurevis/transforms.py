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

__all__ = [
    "STANDARD",
    "Transform",
    "compose",
    "jitter",
    "pad",
    "random_affine",
    "random_rotate",
    "random_scale",
    "resolve",
]

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


def random_affine(
    pad_width: int, shifts: tuple[int, int], factors: Sequence[float], degrees: Sequence[float], value: float = 0.5
) -> Transform:
    """Pad, jitter, random scale, random rotation and jitter again, as one affine resampling.

    The same as ``compose([pad(pad_width), jitter(shifts[0]), random_scale(factors),
    random_rotate(degrees), jitter(shifts[1])])``: the same random draws and output size, but one
    bilinear interpolation instead of two. The chain's coordinate maps compose into one (pixel
    centres, a true rotation about the centre); what falls outside the image takes ``value``, like
    the padding. One ``grid_sample`` forward and backward replace five operations, which matters
    because the transforms run at every step; the sampling grid is one product of the step's
    matrix with the output's pixel centres, kept per output size.
    """
    centres: dict[tuple[int, int, torch.dtype, torch.device], Tensor] = {}

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        first, second = shifts
        a1 = [int(v) for v in torch.randint(first + 1, (2,), generator=generator)]
        factor = _choice(factors, generator)
        angle = math.radians(_choice(degrees, generator))
        a2 = [int(v) for v in torch.randint(second + 1, (2,), generator=generator)]
        height, width = x.shape[-2:]
        cropped = (height + 2 * pad_width - first, width + 2 * pad_width - first)
        scaled = (max(1, round(cropped[0] * factor)), max(1, round(cropped[1] * factor)))
        out = (scaled[0] - second, scaled[1] - second)
        # output pixel centre c = (u + 1)·out/2 in normalised u; centred in the scaled frame: k·u + o
        ky, kx = out[0] / 2, out[1] / 2
        oy, ox = out[0] / 2 + a2[0] - scaled[0] / 2, out[1] / 2 + a2[1] - scaled[1] / 2
        ry, rx = cropped[0] / scaled[0], cropped[1] / scaled[1]  # undo the scaling
        cos, sin = math.cos(angle), math.sin(angle)  # undo the rotation about the centre, then crop and pad
        theta = torch.tensor(
            [
                [2 / width * rx * cos * kx, -2 / width * rx * sin * ky,
                 2 / width * (rx * (cos * ox - sin * oy + scaled[1] / 2) + a1[1] - pad_width) - 1],
                [2 / height * ry * sin * kx, 2 / height * ry * cos * ky,
                 2 / height * (ry * (sin * ox + cos * oy + scaled[0] / 2) + a1[0] - pad_width) - 1],
            ],
            dtype=x.dtype, device=x.device,
        )  # fmt: skip
        key = (*out, x.dtype, x.device)
        if key not in centres:  # normalised x of the output's pixel centres per column, y per row
            if len(centres) >= 64:  # a few sizes recur (one per scale factor); never an unbounded cache
                centres.clear()
            centres[key] = tuple(
                ((2 * torch.arange(n, dtype=x.dtype, device=x.device) + 1) / n - 1)[:, None] for n in (out[1], out[0])
            )
        columns, rows = centres[key]  # (W, 1), (H, 1)
        # the grid (H, W, 2) = theta · (x, y, 1) as a sum of a per-column and a per-row term: a broadcast add is
        # several times faster than a matrix product whose inner dimension is 2
        grid = (columns * theta[:, 0])[None] + torch.addcmul(theta[:, 2], rows, theta[:, 1])[:, None]
        return _resample(x - value, grid) + value

    return apply


def _resample(x: Tensor, grid: Tensor) -> Tensor:
    """``grid_sample(x, grid)`` (bilinear, zeros outside) for a grid ``(H, W, 2)`` shared by the batch.

    A small batch is cut into bands of output rows, so every thread has an image to work on: the CPU
    backward of ``grid_sample`` (a scatter) runs one thread per image, and for one image it costs more
    than the model's own layers around it.
    """
    batch, (height, width) = x.shape[0], grid.shape[:2]
    bands = min(torch.get_num_threads() // batch, height) if x.device.type == "cpu" else 1
    if bands < 2:
        return F.grid_sample(x, grid.expand(batch, -1, -1, -1), mode="bilinear", align_corners=False)
    rows = -(-height // bands)  # per band; the last grid row is repeated to fill the last band
    grid = torch.cat([grid, grid[-1:].expand(bands * rows - height, -1, -1)]) if bands * rows > height else grid
    sampled = F.grid_sample(  # (bands · B, C, rows, W), band-major
        x.repeat(bands, 1, 1, 1) if batch > 1 else x.expand(bands, -1, -1, -1),
        grid.view(bands, 1, rows, width, 2).expand(-1, batch, -1, -1, -1).reshape(-1, rows, width, 2),
        mode="bilinear",
        align_corners=False,
    )
    banded = sampled.view(bands, batch, -1, rows, width).permute(1, 2, 0, 3, 4).reshape(batch, -1, bands * rows, width)
    return banded[:, :, :height]


STANDARD = random_affine(12, (8, 4), [1 + (i - 5) / 50 for i in range(11)], list(range(-10, 11)) + 5 * [0])
"""Lucid's ``standard_transforms`` — pad 12, jitter 8, scale 0.9–1.1, rotate −10°…10° (0° more often),
jitter 4 — fused into one resampling (:func:`random_affine`)."""


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
