"""Convolution filters as images: the first layer's weights show what the network looks for in pixels.

:func:`filters` reads a convolution's weights ``(out, in, kh, kw)`` (the first ``Conv2d`` of the
model by default) into a :class:`FilterBank`, which draws itself as a tile grid — RGB tiles for a
3-channel input layer, one grey tile per input channel otherwise — with the normalisation written
on the figure (one scale for the layer, or one per filter).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from deepscope.layers import LayerSpec, is_layer, resolve_layer
from deepscope.repro import library_versions

__all__ = ["FilterBank", "filters"]

Normalization = Literal["shared", "per_filter"]


@dataclass(frozen=True, slots=True)
class FilterBank:
    """The weights of one convolution, ``(out, in, kh, kw)`` float32 on the CPU, and how to draw them."""

    layer: str
    weights: Tensor
    normalize: Normalization = "shared"
    versions: dict[str, str] = field(default_factory=dict)

    def save(self, out_png: str | Path) -> Path:
        """Draw the tile grid into ``out_png``."""
        from deepscope.plots import filter_grid  # the presentation layer, loaded to draw

        return filter_grid(
            self.weights.numpy(), Path(out_png), normalize=self.normalize, title=f"Filters of {self.layer}"
        )

    def _repr_png_(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.save(Path(tmp) / "filters.png").read_bytes()


def filters(model: nn.Module, layer: LayerSpec | None = None, *, normalize: Normalization = "shared") -> FilterBank:
    """The filters of ``layer`` (default: the model's first ``Conv2d``).

    Raises:
        ValueError: the model has no convolution, or ``layer`` is not one.
    """
    if normalize not in ("shared", "per_filter"):
        raise ValueError(f"normalize must be 'shared' or 'per_filter', got {normalize!r}")
    if layer is None:
        found = next(((n, m) for n, m in model.named_modules() if is_layer(m, nn.Conv2d)), None)
        if found is None:
            raise ValueError("the model has no nn.Conv2d layer; pass layer= to choose a convolution")
        name, module = found
    else:
        name, module = resolve_layer(model, layer)
    weight = getattr(module, "weight", None)
    if not is_layer(module, (nn.Conv2d, nn.ConvTranspose2d)) or not isinstance(weight, Tensor) or weight.ndim != 4:
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a 2-D convolution")
    return FilterBank(name, weight.detach().float().cpu().clone(), normalize, library_versions())
