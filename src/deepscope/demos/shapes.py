"""The attribution demo: a small CNN trained on synthetic shapes, explained by every method and scored.

The shapes come with pixel-exact object masks, so the pointing game and energy-in-mask have ground
truth; deletion and insertion AUC and the sanity check say which maps follow the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from deepscope.attribution import ATTRIBUTIONS, compare
from deepscope.datasets import shapes
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.demos.shapes_cnn import train_shapes_cnn
from deepscope.registry import DEMOS

__all__ = ["ShapesDemoConfig", "record"]

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapesDemoConfig:
    """Settings of the attribution demo."""

    n_images: int = 6
    seed: int = 0
    sanity: bool = True  # cascading randomisation for a few methods (Adebayo et al. 2018)


# Cheap but faithful settings for the tour; users get the papers' defaults from explain().
_PARAMS = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"n_samples": 16},
    "scorecam": {"batch_size": 64},
    "occlusion": {"window": 8, "stride": 4},
    "rise": {"n_masks": 500},
}
_SANITY_METHODS = ("saliency", "guided_backprop", "gradcam")


@DEMOS.register("shapes")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Train (or load from the cache) the shapes CNN, compare every method on held-out images, record the run."""
    config = apply_overrides(
        ShapesDemoConfig(n_images=3, sanity=False) if quick else ShapesDemoConfig(), overrides or {}
    )
    out = Path(out_dir)
    clear_runs(out)
    model, _ = train_shapes_cnn(seed=config.seed)
    held_out = shapes(config.n_images, seed=10_000 + config.seed)
    methods = [m for m in ATTRIBUTIONS.names() if m != "cam" or _has_gap_head(model)]
    generator = torch.Generator().manual_seed(config.seed)
    comparison = compare(
        model,
        held_out.images,
        methods=methods,
        metrics=("deletion", "insertion", "pointing_game", "energy_in_mask"),
        target=held_out.labels.tolist(),
        masks=held_out.masks,
        params=_PARAMS,
        generator=generator,
    )
    runs = [comparison.record(out / "attribution", name="shapes CNN: every method", overwrite=True)]
    if config.sanity:
        sane = compare(
            model,
            held_out.images[:2],
            methods=[m for m in _SANITY_METHODS if m in ATTRIBUTIONS],
            metrics=("sanity",),
            target=held_out.labels[:2].tolist(),
            generator=generator,
        )
        runs.append(sane.record(out / "sanity", name="shapes CNN: sanity checks", overwrite=True))
    return tuple(runs)


def _has_gap_head(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())
