"""The shapes demo: a small CNN trained on synthetic shapes, explained by every method, scored, and inspected.

The shapes come with pixel-exact object masks, so the pointing game and energy-in-mask have ground
truth; deletion and insertion AUC and the sanity check say which maps follow the model. The layer
views then show what its channels respond to, on held-out shapes and on crops of real photographs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from deepscope.attribution import ATTRIBUTIONS, compare
from deepscope.datasets import PHOTOS, sample_photos, shapes
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.demos.shapes_cnn import train_shapes_cnn
from deepscope.inspection import inspect_layers
from deepscope.occlusion import occlusion_study
from deepscope.registry import DEMOS
from deepscope.robustness import invariance

__all__ = ["ShapesDemoConfig", "record"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShapesDemoConfig:
    """Settings of the attribution demo."""

    n_images: int = 6
    seed: int = 0
    sanity: bool = True  # cascading randomisation for a few methods (Adebayo et al. 2018)
    curve_steps: int = 32  # points of the deletion and insertion curves
    layers: bool = True  # layer views (filters, top-9 patches with DeconvNet projections) on shapes and photos
    layer_images: int = 600  # held-out shapes streamed through the layer views
    invariance_images: int = 5  # shapes whose features are followed under translation, scale and rotation


# Cheap but faithful settings for the tour; users get the papers' defaults from explain().
_PARAMS = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"n_samples": 16},
    "scorecam": {"batch_size": 64},
    "occlusion": {"window": 8, "stride": 4},
    "rise": {"n_masks": 256, "batch_size": 128},
}
_SANITY_METHODS = ("saliency", "guided_backprop", "gradcam")
_DATA_NOTE = (
    "Held-out synthetic shapes (deepscope.datasets.shapes) explained for their true class by a 3-block CNN trained "
    "on them in seconds; the object masks are exact, so the pointing game and energy-in-mask have ground truth. "
    "The insertion canvas is the blurred image, the deletion baseline 0."
)
_SANITY_NOTE = (
    "On this 3-block network guided backprop also decorrelates once the convolutions are randomised; on deep "
    "ImageNet CNNs Adebayo et al. found that it barely changes. Run ds.attribution.sanity.sanity_check on your own "
    "model: the verdict depends on the architecture."
)


@DEMOS.register("shapes")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Train (or load from the cache) the shapes CNN, compare every method on held-out images, record the run."""
    config = apply_overrides(
        ShapesDemoConfig(n_images=3, sanity=False, layer_images=200) if quick else ShapesDemoConfig(), overrides or {}
    )
    out = Path(out_dir)
    clear_runs(out)
    model, _ = train_shapes_cnn(seed=config.seed)
    held_out = shapes(config.n_images, seed=10_000 + config.seed)
    methods = ATTRIBUTIONS.names()  # the shapes CNN ends in global average pooling + linear: CAM applies too
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
        captions=[held_out.class_names[int(k)] for k in held_out.labels],
        steps=config.curve_steps,
    )
    comparison = dataclasses.replace(comparison, notes={"data": _DATA_NOTE})
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
        sane = dataclasses.replace(sane, notes={"sanity": _SANITY_NOTE})
        runs.append(sane.record(out / "sanity", name="shapes CNN: sanity checks", overwrite=True))
    if config.layers:
        runs.extend(_layer_runs(model, out, config))
    return tuple(runs)


_INSPECTED = ("features.relu2", "features.relu3")


def _layer_runs(model: torch.nn.Module, out: Path, config: ShapesDemoConfig) -> list[Path]:
    """The layer views on held-out shapes and, when scikit-image is installed, on crops of its photos."""
    views = shapes(config.layer_images, seed=20_000 + config.seed)
    on_shapes = inspect_layers(model, views.images, _INSPECTED, description="held-out synthetic shapes")
    names = views.class_names
    studies = tuple(
        occlusion_study(model, views.images[i], _INSPECTED[-1], target=int(views.labels[i]), window=12, stride=4,
                        class_names=names)
        for i in _one_per_class(views.labels, 2)
    )  # fmt: skip
    probe = views.images[: config.invariance_images]
    curves = tuple(
        invariance(model, probe, t, layers=["features.conv1", _INSPECTED[-1]], labels=views.labels[: len(probe)],
                   class_names=names)
        for t in ("translation", "scale", "rotation")
    )  # fmt: skip
    on_shapes = dataclasses.replace(on_shapes, occlusion=studies, invariance=curves)
    runs = [on_shapes.record(out / "layers-shapes", name="shapes CNN: layers on shapes", overwrite=True)]
    crops = _photo_crops()
    if crops is None:
        logger.warning(
            "scikit-image is not installed: the layer views on photos are skipped (pip install 'deepscope[vision]')"
        )
    else:
        on_photos = inspect_layers(
            model, crops, _INSPECTED, description="64-pixel crops of scikit-image's bundled photographs"
        )
        runs.append(on_photos.record(out / "layers-photos", name="shapes CNN: layers on photos", overwrite=True))
    return runs


def _one_per_class(labels: torch.Tensor, count: int) -> list[int]:
    """The first image of each of the first ``count`` classes present."""
    firsts = {}
    for i, label in enumerate(labels.tolist()):
        firsts.setdefault(label, i)
    return [firsts[k] for k in sorted(firsts)[:count]]


def _photo_crops(size: int = 256, crop: int = 64) -> torch.Tensor | None:
    """Non-overlapping ``crop``-pixel tiles of every bundled photo resized to ``size`` (None without scikit-image)."""
    try:
        photos = sample_photos(PHOTOS, size=size)  # (P, 3, size, size)
    except ImportError:
        return None
    tiles = photos.unfold(2, crop, crop).unfold(3, crop, crop)  # (P, 3, n, n, crop, crop)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, crop, crop).contiguous()
