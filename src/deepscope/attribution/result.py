"""``AttributionMap``: the frozen result of every explanation method, with its provenance."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["AttributionMap", "Normalization"]

Normalization = Literal["abs", "signed", "minmax", "percentile", "none"]


@dataclass(frozen=True, slots=True)
class AttributionMap:
    """Attribution maps for a batch of inputs and how they were made.

    Attributes:
        maps: float32, detached, on the input's device: ``(N, H, W)`` for single-map methods
            (CAM family, occlusion, RISE) or ``(N, C, H, W)`` for per-channel methods (the
            gradient family). Raw values, not normalised: use :meth:`normalized` for display.
        method: the registry key (``"gradcam"``…).
        layer: the dotted name of the layer used, or ``None`` for input-space methods.
        target: the class index explained for each sample, or a description of a custom target.
        params: the method's parameters after defaults were applied.
        scores: the target score of each sample ``(N,)`` at the unmodified input (pre-softmax).
        extras: method-specific results (e.g. the Integrated Gradients convergence ``delta``).
        versions: library versions that produced the maps.
    """

    maps: Tensor
    method: str
    layer: str | None
    target: list[int] | str
    params: dict[str, Any]
    scores: Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def spatial(self) -> Tensor:
        """One ``(N, H, W)`` map per input: per-channel maps are summed over channels (signed)."""
        return self.maps.sum(dim=1) if self.maps.ndim == 4 else self.maps

    def normalized(self, mode: Normalization = "abs", *, percentile: float | None = None) -> Tensor:
        """``(N, H, W)`` maps scaled per sample for display; the choice is explicit, never implied.

        Modes:
            ``"abs"``: |m| / max |m| in [0, 1] (magnitude, sign ignored).
            ``"signed"``: m / max |m| in [-1, 1] (for a diverging colour map centred on 0).
            ``"minmax"``: (m − min) / (max − min) in [0, 1] (for maps with a large offset, as RISE's).
            ``"percentile"``: ``"abs"`` with ``percentile=99`` unless given.
            ``"none"``: the raw spatial maps.

        With ``percentile``, ``"abs"`` and ``"signed"`` divide by that percentile of |m| instead of
        its maximum and clip, so a few extreme pixels do not wash out the rest (SmoothGrad's figures).
        """
        maps = self.spatial()
        if mode == "none":
            return maps
        if mode == "percentile":
            mode, percentile = "abs", 99.0 if percentile is None else percentile
        if mode not in ("abs", "signed", "minmax"):
            raise ValueError(f"unknown normalisation {mode!r}; valid: 'abs', 'signed', 'minmax', 'percentile', 'none'")
        if percentile is not None and not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        tiny = torch.finfo(maps.dtype).tiny
        flat = maps.flatten(1)  # (N, H*W)
        if mode == "minmax":
            low, high = flat.amin(dim=1), flat.amax(dim=1)
            return (maps - low[:, None, None]) / (high - low).clamp_min(tiny)[:, None, None]
        magnitude = flat.abs()
        scale = magnitude.amax(dim=1) if percentile is None else torch.quantile(magnitude, percentile / 100, dim=1)
        scaled = maps / scale.clamp_min(tiny)[:, None, None]
        return scaled.clamp(-1.0, 1.0) if mode == "signed" else scaled.abs().clamp(max=1.0)

    def for_display(self) -> tuple[Tensor, bool]:
        """The maps every deepscope figure draws, and whether they are signed.

        Maps with negative values: ``normalized("signed", percentile=99)`` on a diverging scale;
        non-negative maps: ``normalized("minmax")`` (RISE's maps sit on a large offset).
        """
        signed = bool((self.maps < 0).any())
        return (self.normalized("signed", percentile=99.0) if signed else self.normalized("minmax")), signed

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write maps, scores and provenance to a ``.npz`` file readable without torch."""
        import numpy as np

        out = Path(path)
        meta = {
            "method": self.method,
            "layer": self.layer,
            "target": self.target,
            "params": {
                k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                for k, v in self.params.items()
            },
            "versions": self.versions,
        }
        np.savez_compressed(
            out,
            maps=self.maps.detach().cpu().numpy(),
            scores=self.scores.detach().cpu().numpy(),
            meta=np.array(json.dumps(meta)),
        )
        return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")

    def overlay(self, images: Any, *, alpha: float = 0.5) -> np.ndarray:
        """The maps of :meth:`for_display` blended onto ``images``: ``(N, H, W, 3)`` floats in [0, 1].

        ``images`` are the inputs, ``(N, C, H, W)`` tensors or ``(N, H, W, 3)`` arrays, shown min–max
        scaled per image; write one with ``imageio.v3.imwrite(path, (rgb * 255).astype("uint8"))``.
        """
        from deepscope._attribution_plots import overlay

        pictures = images.detach().float().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        maps, signed = self.for_display()
        heat = maps.detach().cpu().numpy()
        if len(pictures) != len(heat):
            raise ValueError(f"got {len(pictures)} images for {len(heat)} maps; pass the explained inputs")
        return np.stack([overlay(p, h, signed=signed, alpha=alpha) for p, h in zip(pictures, heat, strict=True)])

    def _repr_png_(self) -> bytes:
        """Jupyter display: the normalised maps (signed maps on a diverging scale), up to 8 samples."""
        from deepscope._attribution_plots import map_strip_png

        maps, signed = self.for_display()
        maps = maps.detach().cpu().numpy()
        where = f" · layer {self.layer}" if self.layer else ""
        return map_strip_png(maps, signed=signed, title=f"{self.method}{where} · target {self.target}")

    def __repr__(self) -> str:
        return (
            f"AttributionMap(method={self.method!r}, layer={self.layer!r}, maps={tuple(self.maps.shape)}, "
            f"target={self.target!r})"
        )
