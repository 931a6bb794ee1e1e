"""Image filters shared by baselines and canvases (Integrated Gradients' blurred baseline, insertion's canvas)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_blur"]


def gaussian_blur(images: Tensor, sigma: float, *, kernel_size: int | None = None) -> Tensor:
    """Blur ``(N, C, H, W)`` images with a Gaussian of std ``sigma`` pixels (separable, edges replicated).

    Replicate padding keeps the borders free of the darkening that zero padding causes. The
    kernel spans ``kernel_size`` pixels (odd; default ``2·⌈3σ⌉ + 1``); ``sigma <= 0`` returns a copy.
    """
    if sigma <= 0:
        return images.clone()
    radius = max(1, math.ceil(3 * sigma)) if kernel_size is None else kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (k,)
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)  # along W
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)  # along H
