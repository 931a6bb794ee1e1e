"""Load image files for the command line: RGB, resized, as a normalised batch plus a display copy, or streamed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LabelledImages", "load_images", "read_labelled"]

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


_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class LabelledImages(torch.utils.data.Dataset):
    """Image files with integer labels, read one at a time, so a ``DataLoader`` streams them."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], *, size: int, raw: bool) -> None:
        self.paths, self.labels, self.size = list(paths), list(labels), size
        self.norm = {"mean": (0, 0, 0), "std": (1, 1, 1)} if raw else {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        batch, _ = load_images([self.paths[index]], size=self.size, **self.norm)
        return batch[0], self.labels[index]


def read_labelled(source: Path) -> tuple[list[Path], list[str], dict[str, list[str]]]:
    """Image paths, label texts and the other columns of ``source``.

    ``source`` is a CSV file with a ``path`` and a ``label`` column (paths relative to the file; any
    other column, e.g. a site or a scanner, is returned for groups), or a folder with one sub-folder
    of images per class (the class is the sub-folder's name).
    """
    import csv

    if source.is_dir():
        found = sorted((p for p in source.glob("*/*") if p.suffix.lower() in _SUFFIXES), key=lambda p: str(p))
        if not found:
            raise ValueError(f"{source} has no class sub-folders of images ({', '.join(_SUFFIXES)})")
        return found, [p.parent.name for p in found], {}
    if not source.is_file():
        raise FileNotFoundError(f"data not found: {source} (a CSV with path,label columns or a folder of classes)")
    with source.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    if "path" not in columns or "label" not in columns:
        raise ValueError(f"{source} needs 'path' and 'label' columns; it has {columns or 'no rows'}")
    others = {c: [r[c] for r in rows] for c in columns if c not in ("path", "label")}
    return [source.parent / r["path"] for r in rows], [r["label"] for r in rows], others
