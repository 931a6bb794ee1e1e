"""``deepscope demo featurevis``: what the shapes CNN's channels and classes respond to, before and after training.

One channel atlas of ``features.bn3`` (the last block, before its ReLU) for the trained shapes CNN
and for the same network at its initial weights, and the image each class logit prefers. Trained
channels respond strongly (the objective climbs from about −2 to about 18 in 256 steps) to large,
coherent patterns — stripes and grids of saturated colour, the stuff of the shapes it learnt; the
untrained ones barely respond (−2.00 to −1.95) and give high-frequency texture: random
convolutions have a preferred texture, not a feature.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.demos.shapes_cnn import ShapesCNN, ShapesCNNConfig, train_shapes_cnn
from deepscope.featurevis import feature_vis, feature_vis_grid, objectives, record_feature_vis
from deepscope.registry import DEMOS

__all__ = ["FeatureVisConfig", "record"]

LAYER = "features.bn3"  # pre-ReLU (as Lucid does): a channel that is off on the grey start still has a gradient


@dataclass(frozen=True)
class FeatureVisConfig:
    """Settings of the demo (``deepscope demo featurevis --set steps=512``)."""

    steps: int = 256
    size: int = 64
    channels: int = 8
    seed: int = 0


@DEMOS.register("featurevis")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Visualise the trained and the untrained shapes CNN's channels, and the trained one's classes; record a run."""
    config = apply_overrides(FeatureVisConfig(steps=24) if quick else FeatureVisConfig(), overrides or {})
    out = Path(out_dir)
    clear_runs(out)
    trained, held_out = train_shapes_cnn(seed=config.seed)
    with torch.random.fork_rng(devices=[]):  # the weights training started from (train_shapes_cnn's init)
        torch.manual_seed(config.seed)
        untrained = ShapesCNN(len(held_out.class_names), ShapesCNNConfig().widths).eval()
    settings = {"size": config.size, "steps": config.steps}
    channels = range(config.channels)

    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(config.seed)

    results = {
        f"Trained: channels of {LAYER}": feature_vis_grid(trained, LAYER, channels, generator=generator(), **settings),
        f"Untrained (initial weights): channels of {LAYER}": feature_vis_grid(
            untrained, LAYER, channels, generator=generator(), **settings
        ),
        "Trained: the image each class logit prefers": feature_vis(
            trained, objectives.class_logit(list(range(len(held_out.class_names)))),
            batch=len(held_out.class_names), labels=held_out.class_names, generator=generator(), **settings,
        ),
    }  # fmt: skip
    description = (
        "The shapes CNN before and after training, same architecture and initial weights: what maximises each "
        f"of the first {config.channels} channels of {LAYER}, and each class logit."
    )
    return (record_feature_vis(out / "featurevis", results, name="shapes CNN: feature visualisation",
                               description=description, overwrite=True),)  # fmt: skip
