"""Load image files for the command line: RGB, resized, as a normalised batch plus a display copy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Tensor, np.ndarray]:
    """Read images as ``(N, 3, size, size)`` normalised by ``mean``/``std``, and the ``(N, size, size, 3)`` [0, 1] copy.

    Each image is resized so its shorter side is ``size`` and centre-cropped to a square.
    """
    from PIL import Image, UnidentifiedImageError

    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    arrays = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except UnidentifiedImageError as error:
            raise ValueError(f"{path} is not an image PIL can read (PNG, JPEG, …)") from error
        scale = size / min(rgb.size)
        resized = rgb.resize(
            (max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))), Image.BILINEAR
        )
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        arrays.append(np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0)
    if not arrays:
        raise ValueError("no image given")
    display = np.stack(arrays)  # (N, H, W, 3) in [0, 1]
    batch = torch.from_numpy(display).permute(0, 3, 1, 2)  # (N, 3, H, W)
    batch = (batch - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return batch.contiguous(), display
