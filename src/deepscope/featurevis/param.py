"""How the optimised image is parameterised: raw pixels, or a Fourier spectrum with decorrelated colour.

Olah et al. (2017, §Preconditioning): optimising pixels directly gives high-frequency noise. A
spectrum scaled by ``1 / frequency`` gives every frequency the same gradient scale, and optimising
in a decorrelated colour space (the square root of the pixel covariance of natural images maps it
back to RGB) equalises the colour directions. A sigmoid maps the result into ``[0, 1]``.

Every parameterisation is a small object with ``parameters()`` (the tensors to optimise) and a call
that returns the ``(B, 3, H, W)`` batch of images; everything random comes from the generator given.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

__all__ = ["COLOR_CORRELATION", "Fourier", "ImageParam", "Pixels", "color_correlation", "make_param"]

COLOR_CORRELATION = (
    (0.2437, 0.1236, 0.0126),
    (0.2173, -0.0365, -0.0308),
    (0.1734, -0.1280, 0.0209),
)
"""The default decorrelated-colour → RGB matrix: :func:`color_correlation` of scikit-image's four bundled
photographs (``deepscope.datasets.PHOTOS`` at 224 px), each column signed so its first entry is positive."""

_SPECTRUM_STD = 0.01  # initial spread of the Fourier coefficients: a near-grey start
_AMPLITUDE = 0.25  # image values per unit of (scaled, orthonormal) spectrum: Adam's steps stay in the sigmoid's middle
_PIXEL_STD = 0.01


class ImageParam(Protocol):
    """A parameterised batch of images: the tensors to optimise, and the images they give."""

    def parameters(self) -> list[Tensor]:
        """The tensors the optimiser updates."""
        ...

    def __call__(self) -> Tensor:
        """The ``(B, C, H, W)`` images, differentiable in :meth:`parameters`."""
        ...


def color_correlation(images: Tensor) -> Tensor:
    """The ``(3, 3)`` square root ``U·√S`` of the RGB covariance of ``images`` ``(N, 3, H, W)`` (SVD of the covariance).

    Multiplying decorrelated colour vectors by it gives RGB vectors with the images' colour statistics.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"colour statistics need RGB images (N, 3, H, W), got {tuple(images.shape)}")
    pixels = images.detach().permute(0, 2, 3, 1).reshape(-1, 3).double()  # (N·H·W, 3)
    u, s, _ = torch.linalg.svd(torch.cov(pixels.T))
    root = u * s.sqrt()  # (3, 3), columns = principal colour axes scaled by their spread
    return (root * torch.where(root[0] < 0, -1.0, 1.0)).float()  # each column's sign fixed: first entry positive


class Pixels:
    """The pixels themselves, squashed into range: ``sigmoid`` to ``[0, 1]``, or ``unit_norm`` (each image norm 1)."""

    def __init__(
        self,
        batch: int,
        size: tuple[int, int],
        *,
        channels: int = 3,
        squash: Literal["sigmoid", "unit_norm"] = "sigmoid",
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if squash not in ("sigmoid", "unit_norm"):
            raise ValueError(f"squash must be 'sigmoid' or 'unit_norm', got {squash!r}")
        start = _PIXEL_STD * torch.randn(batch, channels, *size, generator=generator)
        self.values = start.to(device).requires_grad_(True)
        self.squash = squash

    def parameters(self) -> list[Tensor]:
        """The raw pixel values."""
        return [self.values]

    def __call__(self) -> Tensor:
        """The ``(B, C, H, W)`` images."""
        if self.squash == "unit_norm":
            return self.values / self.values.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return torch.sigmoid(self.values)


class Fourier:
    """A spectrum per image and colour, scaled by ``1 / max(frequency, 1 / side) ** decay``, in decorrelated colour.

    ``image = sigmoid(C · a · irfft2(scale · spectrum))`` (orthonormal transform, ``a = 1/4``) with
    ``C`` the colour matrix scaled so its largest column has norm 1 (``COLOR_CORRELATION`` by default;
    pass :func:`color_correlation` of your data). ``decorrelate=False`` keeps RGB.
    """

    def __init__(
        self,
        batch: int,
        size: tuple[int, int],
        *,
        decay: float = 1.0,
        decorrelate: bool = True,
        color: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        height, width = size
        fy = torch.fft.fftfreq(height)[:, None]  # (H, 1) cycles per pixel
        fx = torch.fft.rfftfreq(width)[None, :]  # (1, W//2+1)
        frequency = (fy.square() + fx.square()).sqrt()
        self.scale = (1.0 / frequency.clamp_min(1.0 / max(height, width)) ** decay).to(device)  # (H, W//2+1)
        # the same for the real and imaginary parts, stored whole: a product that broadcasts along the last
        # axis of size 2 is several times slower than an elementwise one, and this runs at every step
        self._real_scale = (_AMPLITUDE * self.scale)[..., None].expand(*self.scale.shape, 2).contiguous()
        shape = (batch, 3, *frequency.shape, 2)  # real and imaginary parts
        self.spectrum = (_SPECTRUM_STD * torch.randn(shape, generator=generator)).to(device).requires_grad_(True)
        self.size = size
        matrix = torch.as_tensor(COLOR_CORRELATION if color is None else color, dtype=torch.float32)
        if matrix.shape != (3, 3):
            raise ValueError(f"the colour matrix must be 3 × 3, got {tuple(matrix.shape)}")
        self.color = (matrix / matrix.norm(dim=0).max()).to(device) if decorrelate else None

    def parameters(self) -> list[Tensor]:
        """The spectrum's real and imaginary parts."""
        return [self.spectrum]

    def __call__(self) -> Tensor:
        """The ``(B, 3, H, W)`` images in ``[0, 1]``."""
        coefficients = self.spectrum * self._real_scale  # (B, 3, H, W//2+1, 2)
        if self.color is not None:  # mixing the colours of the spectrum mixes those of the image (irfft2 is linear)
            coefficients = torch.matmul(self.color, coefficients.view(len(coefficients), 3, -1)).view_as(coefficients)
        return torch.sigmoid(torch.fft.irfft2(torch.view_as_complex(coefficients), s=self.size, norm="ortho"))


def make_param(
    kind: str | ImageParam,
    batch: int,
    size: int | tuple[int, int],
    generator: torch.Generator,
    device: torch.device,
    color: Tensor | None = None,
) -> ImageParam:
    """A parameterisation by name (``"fourier"``, ``"pixels"``), or ``kind`` itself when it is one."""
    if not isinstance(kind, str):
        return kind
    side = (size, size) if isinstance(size, int) else tuple(size)
    if min(side) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if kind == "fourier":
        return Fourier(batch, side, color=color, generator=generator, device=device)
    if kind == "pixels":
        return Pixels(batch, side, generator=generator, device=device)
    raise ValueError(f"unknown parameterisation {kind!r}; valid: 'fourier', 'pixels', or an ImageParam object")
