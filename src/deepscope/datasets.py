"""Built-in data for demos and tests: synthetic shapes with exact masks, templated reviews, a few real photos.

:func:`shapes` draws one filled shape per image (random position, size, rotation and colour) on a
random textured background. Every background parameter is drawn independently of the class, so
the background carries no information about the label: a network that classifies these images
has to look at the object, and the object mask is the ground truth of the pointing game and of
energy-in-mask. Generation is vectorised over the batch (coordinate grids, no per-pixel loops)
and takes about 0.2 s for 1000 images of 64 px on two CPU cores.

:func:`reviews` writes short templated movie reviews with a sentiment label, for text models.

:func:`sample_photos` returns scikit-image's bundled photographs (offline), for visual demos on
ImageNet models.

Example:
    >>> data = shapes(8, size=64, seed=0)
    >>> data.images.shape, data.labels.shape, data.masks.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8]), torch.Size([8, 64, 64]))
    >>> painted = (data.images == data.colors[:, :, None, None]).all(dim=1)  # (N, H, W)
    >>> torch.equal(painted, data.masks)  # the object colour is exactly on the mask
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deepscope.errors import UnknownNameError

__all__ = [
    "BACKGROUNDS",
    "CUE_COLORS",
    "PHOTOS",
    "REVIEW_CLASSES",
    "SHAPES",
    "ShapesData",
    "digits",
    "reviews",
    "sample_photos",
    "shapes",
]

_Mask = Callable[[Tensor, Tensor], Tensor]  # (u, v) shape coordinates in radius units -> bool mask


def _triangle(u: Tensor, v: Tensor, radius: float = 1.2) -> Tensor:
    # equilateral triangle with circumradius `radius`: inside the three edges, inradius radius / 2
    inside = torch.ones_like(u, dtype=torch.bool)
    for angle in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):  # outward edge normals
        inside &= u * math.cos(angle) + v * math.sin(angle) <= radius / 2
    return inside


def _cross(u: Tensor, v: Tensor, half_width: float = 0.3) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= half_width) & (av <= 1)) | ((av <= half_width) & (au <= 1))


SHAPES: dict[str, _Mask] = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.8,
    "triangle": _triangle,
    "cross": _cross,
    "ring": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.45**2),
    "star": lambda u, v: _triangle(u, v) | _triangle(-u, -v),  # hexagram: two opposed triangles
}
"""Shape names accepted by :func:`shapes`, mapped to their indicator in the shape's own frame.

The frame is centred on the shape, rotated with it and measured in units of its radius; every
shape fits in a disc of radius 1.2.
"""
_EXTENT = 1.2  # radius units: the farthest point of any shape from its centre

BACKGROUNDS = ("texture", "noise", "stripes", "plain")
"""Backgrounds of :func:`shapes`: smooth noise plus stripes, either alone, or one flat colour."""

CUE_COLORS = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (0.0, 0.0, 0.0))
"""Marker colour of each class index for :func:`shapes`' ``cue`` (red, blue, yellow, cyan, magenta, black)."""

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
"""Colour photographs bundled with scikit-image, accepted by :func:`sample_photos`."""


@dataclass(frozen=True, slots=True)
class ShapesData:
    """A batch of synthetic shape images with their labels and exact object masks.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64 indices into ``class_names``.
        masks: ``(N, H, W)`` bool, true exactly on the pixels painted with the object colour.
        boxes: ``(N, 4)`` float32 ``(x_min, y_min, x_max, y_max)`` in pixel-edge coordinates (the
            torchvision convention): the mask's pixels ``x_min <= x < x_max``, ``y_min <= y < y_max``.
        colors: ``(N, 3)`` float32, the object's RGB colour.
        class_names: the name of each label index.
        cues: ``(N,)`` int64, the class whose colour the corner marker shows (``-1``: no marker; see
            :func:`shapes`' ``cue``).
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    colors: Tensor
    class_names: tuple[str, ...]
    cues: Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: Tensor | slice) -> ShapesData:
        """Return the images selected by ``index`` (a slice, an index tensor or a boolean mask)."""
        return ShapesData(
            images=self.images[index],
            labels=self.labels[index],
            masks=self.masks[index],
            boxes=self.boxes[index],
            colors=self.colors[index],
            class_names=self.class_names,
            cues=self.cues[index] if self.cues is not None else None,
        )

    def to(self, device: torch.device | str) -> ShapesData:
        """Return the same data on ``device``."""
        return ShapesData(
            images=self.images.to(device),
            labels=self.labels.to(device),
            masks=self.masks.to(device),
            boxes=self.boxes.to(device),
            colors=self.colors.to(device),
            class_names=self.class_names,
            cues=self.cues.to(device) if self.cues is not None else None,
        )


def shapes(
    n: int,
    size: int = 64,
    *,
    classes: Sequence[str] = ("circle", "square", "triangle", "cross"),
    seed: int = 0,
    background: str = "texture",
    radius: tuple[float, float] = (0.12, 0.22),
    cue: float | None = None,
    device: torch.device | str | None = None,
) -> ShapesData:
    """Draw ``n`` images of one filled shape each, on a background that does not reveal the class.

    Classes are balanced (counts differ by at most one) and shuffled. Each shape gets a random
    radius (by default 12–22 % of the image side), a centre that keeps it entirely inside the image, a random
    rotation and a saturated random colour; it is painted without anti-aliasing, so ``masks`` is
    pixel-exact. The background (per image: base colour, smooth multi-scale noise, stripes of
    random frequency and orientation) is drawn independently of the label, and every image has
    one. Everything is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the
    images are identical on every device and the global RNG is untouched.

    Args:
        n: number of images.
        size: image side in pixels (at least 16).
        classes: shape names from :data:`SHAPES`, in label order.
        seed: the seed of the generator every random choice comes from.
        background: one of :data:`BACKGROUNDS`.
        radius: the range of the shape radius, as fractions of ``size`` (uniform; at most 0.35).
        cue: add a spurious cue: a square marker in the top-left corner (side ``size // 8``, under the
            object when they overlap) painted in a class colour of :data:`CUE_COLORS`. With probability
            ``cue`` it shows the image's own class, otherwise a uniformly drawn one: ``1`` makes the
            marker reveal the class, ``0`` makes it independent of the class (a de-biased test set).
            ``None`` (default): no marker, and the images are exactly those drawn without this argument.
        device: where the returned tensors live (default: CPU).

    Returns:
        A :class:`ShapesData`.

    Example:
        >>> data = shapes(100, seed=1)
        >>> data.labels.bincount().tolist()
        [25, 25, 25, 25]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16 pixels, got {size!r}")
    if isinstance(classes, str):
        raise TypeError(f"classes must be a sequence of shape names, got the string {classes!r}; wrap it in a tuple")
    names = tuple(classes)
    if not names:
        raise ValueError(f"classes must name at least one shape of: {', '.join(SHAPES)}")
    for name in names:
        if name not in SHAPES:
            raise UnknownNameError("shape", name, SHAPES)
    if len(set(names)) != len(names):
        raise ValueError(f"classes contain duplicates: {names}")
    if background not in BACKGROUNDS:
        raise UnknownNameError("background", background, BACKGROUNDS)
    if cue is not None and not (isinstance(cue, (int, float)) and 0 <= cue <= 1):
        raise ValueError(f"cue must be a probability in [0, 1] or None, got {cue!r}")
    if cue is not None and len(names) > len(CUE_COLORS):
        raise ValueError(f"a cue marker has {len(CUE_COLORS)} colours, so at most {len(CUE_COLORS)} classes")
    low, high = (float(r) for r in radius)
    if not 0 < low <= high <= 0.35:
        raise ValueError(
            f"radius must be a (min, max) fraction of the size with 0 < min <= max <= 0.35, got {radius!r}"
        )

    g = torch.Generator().manual_seed(seed)
    k = len(names)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # (N,) balanced
    radius = size * (low + (high - low) * torch.rand(n, generator=g))  # (N,) pixels
    margin = _EXTENT * radius + 1
    cx, cy = (margin + (size - 2 * margin) * torch.rand(2, n, generator=g)).unbind(0)  # (N,) each
    angle = 2 * math.pi * torch.rand(n, generator=g)  # (N,)
    colors = _hsv_to_rgb(
        torch.rand(n, generator=g),  # hue
        0.6 + 0.4 * torch.rand(n, generator=g),  # saturation
        0.6 + 0.4 * torch.rand(n, generator=g),  # value
    )  # (N, 3)
    backdrop = _background(n, size, background, g)  # (N, 3, H, W), independent of the labels

    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    dx = coords.view(1, 1, size) - cx.view(n, 1, 1)  # (N, 1, W)
    dy = coords.view(1, size, 1) - cy.view(n, 1, 1)  # (N, H, 1)
    cos, sin, r = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1), radius.view(n, 1, 1)
    u = (dx * cos + dy * sin) / r  # (N, H, W) shape frame, radius units
    v = (dy * cos - dx * sin) / r  # (N, H, W)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for label, name in enumerate(names):
        pick = labels == label
        masks[pick] = SHAPES[name](u[pick], v[pick])

    cues = None
    if cue is not None:  # drawn last: without a cue the random stream, hence the images, are unchanged
        cues = _paint_cues(backdrop, labels, k, float(cue), g)
    images = torch.where(masks[:, None], colors[:, :, None, None], backdrop)  # (N, 3, H, W)
    data = ShapesData(
        images=images.contiguous(),
        labels=labels,
        masks=masks,
        boxes=_boxes(masks),
        colors=colors,
        class_names=names,
        cues=cues,
    )
    return data if device is None else data.to(device)


def _paint_cues(backdrop: Tensor, labels: Tensor, classes: int, agreement: float, g: torch.Generator) -> Tensor:
    """Paint the corner marker into ``backdrop`` in place; return the class each marker shows ``(N,)``."""
    n, _, size, _ = backdrop.shape
    agrees = torch.rand(n, generator=g) < agreement
    cues = torch.where(agrees, labels, torch.randint(0, classes, (n,), generator=g))  # (N,)
    side = max(2, size // 8)
    backdrop[:, :, :side, :side] = torch.tensor(CUE_COLORS)[cues][:, :, None, None]
    return cues


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV → RGB for ``(N,)`` tensors in ``[0, 1]``; returns ``(N, 3)``."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6  # (N, 3)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)  # (N, 3)
    return v[:, None] - (v * s)[:, None] * ramp


def _smooth_noise(n: int, channels: int, size: int, g: torch.Generator) -> Tensor:
    """Multi-scale value noise, ``(n, channels, size, size)``, roughly zero mean and unit scale.

    The octaves (4, 8 and 16 cells per side) are summed at 16 × 16 and upsampled once, which
    keeps the cost at one bilinear interpolation of the output size.
    """
    fine = 16
    total = 0.1 * torch.randn(n, channels, fine, fine, generator=g)
    for cells, weight in ((4, 0.6), (8, 0.3)):
        grid = torch.randn(n, channels, cells, cells, generator=g)
        total += weight * F.interpolate(grid, size=(fine, fine), mode="bicubic", align_corners=False)
    return F.interpolate(total, size=(size, size), mode="bilinear", align_corners=False)


def _background(n: int, size: int, kind: str, g: torch.Generator) -> Tensor:
    """Per-image backgrounds ``(n, 3, size, size)`` in ``[0, 1]`` whose parameters ignore the labels."""
    # a greyish base colour: a shared level plus a small tint, so saturated objects stand out
    base = 0.3 + 0.4 * torch.rand(n, 1, generator=g) + 0.08 * torch.randn(n, 3, generator=g)  # (N, 3)
    out = base[:, :, None, None].expand(n, 3, size, size).clone()
    if kind in ("texture", "noise"):
        contrast = 0.05 + 0.15 * torch.rand(n, 1, 1, 1, generator=g)
        noise = _smooth_noise(n, 4, size, g)  # (N, 4, H, W): luminance, then chroma per channel
        out += contrast * (noise[:, :1] + 0.3 * noise[:, 1:])
    if kind in ("texture", "stripes"):
        coords = torch.arange(size, dtype=torch.float32) / size
        theta = math.pi * torch.rand(n, generator=g)
        cycles = 2 + 6 * torch.rand(n, generator=g)  # stripes per image side
        phase = 2 * math.pi * torch.rand(n, generator=g)
        along = coords.view(1, 1, size) * theta.cos().view(n, 1, 1) + coords.view(1, size, 1) * theta.sin().view(
            n, 1, 1
        )  # (N, H, W)
        wave = torch.sin(2 * math.pi * cycles.view(n, 1, 1) * along + phase.view(n, 1, 1))  # (N, H, W)
        amplitude = 0.12 * torch.rand(n, 1, 1, 1, generator=g) * (0.5 + torch.rand(n, 3, 1, 1, generator=g))
        out += amplitude * wave[:, None]
    return out.clamp_(0, 1)


def _boxes(masks: Tensor) -> Tensor:
    """Tight ``(x_min, y_min, x_max, y_max)`` pixel-edge boxes of non-empty ``(N, H, W)`` masks."""
    size_y, size_x = masks.shape[-2:]
    cols, rows = masks.any(dim=1).float(), masks.any(dim=2).float()  # (N, W), (N, H)
    x_min, y_min = cols.argmax(dim=1), rows.argmax(dim=1)  # first true
    x_max, y_max = size_x - cols.flip(1).argmax(dim=1), size_y - rows.flip(1).argmax(dim=1)  # one past the last
    return torch.stack([x_min, y_min, x_max, y_max], dim=1).float()  # (N, 4)


def sample_photos(
    names: Sequence[str] = ("chelsea", "astronaut", "coffee"),
    size: int = 224,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Load scikit-image's bundled colour photographs (no network), centre-cropped and resized.

    The images are plain RGB in ``[0, 1]``; normalise them the way your model expects (e.g. the
    ImageNet mean and standard deviation for torchvision weights).

    Args:
        names: photographs from :data:`PHOTOS`, in the order wanted.
        size: side of the square output in pixels.
        device: where the returned tensor lives (default: CPU).

    Returns:
        A float32 tensor ``(len(names), 3, size, size)``.

    Raises:
        ImportError: scikit-image is not installed (``pip install 'deepscope[vision]'``).

    Example:
        >>> photos = sample_photos(("chelsea",), size=224)  # doctest: +SKIP
        >>> photos.shape  # doctest: +SKIP
        torch.Size([1, 3, 224, 224])
    """
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise ValueError(f"names must list at least one photograph of: {', '.join(PHOTOS)}")
    for name in names:
        if name not in PHOTOS:
            raise UnknownNameError("photo", name, PHOTOS)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "sample_photos needs scikit-image, which ships these photographs: pip install 'deepscope[vision]'"
        ) from err
    out = []
    for name in names:
        pixels = torch.from_numpy(getattr(skimage.data, name)().copy())  # (H, W, 3) uint8
        image = pixels.permute(2, 0, 1).float().div_(255)  # (3, H, W)
        height, width = image.shape[1:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = image[None, :, top : top + side, left : left + side]  # (1, 3, side, side)
        out.append(F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    photos = torch.cat(out).clamp_(0, 1)  # (N, 3, size, size)
    return photos if device is None else photos.to(device)


def digits(size: int = 16) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled handwritten digits (1797 images, no network), as ``(N, 1, size, size)`` in [0, 1].

    The 8 × 8 originals (grey levels 0–16) are scaled to [0, 1] and upsampled bilinearly to
    ``size`` pixels, so convolutions and pooling have room to work. Labels are the digits 0–9.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be at least the original 8 pixels, got {size}")
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    if size != 8:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0), torch.as_tensor(bunch.target, dtype=torch.long)


_REVIEW_TEMPLATES = (
    "the {noun} was {adj}",
    "a {adj} {noun}",
    "what a {adj} {noun}",
    "i found the {noun} {adj}",
    "honestly the {noun} is {adj}",
    "the {noun} felt {adj} from start to finish",
    "my friends thought the {noun} was {adj}",
)
_REVIEW_NOUNS = ("film", "plot", "acting", "story", "ending", "soundtrack", "script", "movie", "cast", "dialogue")
_REVIEW_WORDS = {  # (train, test) adjectives per sentiment: the test split's words never appear in training
    0: (("awful", "boring", "dull", "terrible", "tedious", "clumsy"), ("dreadful", "bland", "messy")),
    1: (("wonderful", "great", "delightful", "brilliant", "charming", "superb"), ("excellent", "lovely", "moving")),
}
REVIEW_CLASSES = ("negative", "positive")
"""Class names of :func:`reviews`' labels."""


def reviews(count: int, *, split: str = "train", seed: int = 0) -> tuple[list[str], list[int]]:
    """Short templated movie reviews and their sentiment (0 negative, 1 positive), balanced.

    The sentiment is carried by one adjective; ``split="test"`` uses adjectives that ``"train"`` never
    shows, so a classifier's test accuracy measures what it learnt about the words' meaning (from a
    pretrained encoder), not memorised words. Token attributions should point at that adjective.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    g = torch.Generator().manual_seed(seed)
    part = 0 if split == "train" else 1
    texts, labels = [], []
    for i in range(count):
        label = i % 2
        words = _REVIEW_WORDS[label][part]
        template, noun, adjective = (
            options[int(torch.randint(len(options), (1,), generator=g))]
            for options in (_REVIEW_TEMPLATES, _REVIEW_NOUNS, words)
        )
        texts.append(template.format(noun=noun, adj=adjective))
        labels.append(label)
    return texts, labels
