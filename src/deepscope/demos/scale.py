"""``deepscope demo scale``: every image of a held-out shapes set explained, written as shards, summarised per class.

The trained shapes CNN (the cache the shapes demo uses) explains a fresh test set with
:func:`deepscope.explain_dataset`, one compressed shard file per 128 images in ``<out>/maps/<method>``;
the run ``<out>/explanations`` records what the explanation covered and cost, each class's mean
map and a few examples per class. Locally here; ``backend="ray"`` runs the same shards on a cluster
and writes the same files (``--set methods=gradcam,rise`` adds RISE, slower).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deepscope.datasets import shapes
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.demos.shapes_cnn import ShapesCNNConfig, train_shapes_cnn
from deepscope.registry import DEMOS
from deepscope.scale import explain_dataset

__all__ = ["ScaleDemoConfig", "record"]


@dataclass(frozen=True)
class ScaleDemoConfig:
    """Settings of the demo (``deepscope demo scale --set n_images=2048``)."""

    n_images: int = 512
    seed: int = 0
    methods: tuple[str, ...] = ("gradcam",)
    shard_size: int = 128
    examples: int = 4  # recorded per class, with their maps


# Cheap but usable settings (maps stored as float16: half the bytes, enough for a scaled map).
_PARAMS = {"rise": {"n_masks": 128, "batch_size": 128}, "integrated_gradients": {"n_steps": 16}}


@DEMOS.register("scale")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Explain a fresh shapes test set with the cached shapes CNN, shard by shard, and record the summaries."""
    quick_config = ScaleDemoConfig(n_images=128, shard_size=32, examples=2)
    config = apply_overrides(quick_config if quick else ScaleDemoConfig(), overrides or {})
    out = Path(out_dir)
    clear_runs(out)
    model, _ = train_shapes_cnn(seed=config.seed)
    trained = ShapesCNNConfig()
    data = shapes(config.n_images, trained.size, classes=trained.classes, radius=trained.radius,
                  seed=30_000 + config.seed)  # fmt: skip
    run = out / "explanations"
    for method in config.methods:
        result = explain_dataset(
            model, (data.images, data.labels), method, out=out / "maps" / method, target="label",
            shard_size=config.shard_size, seed=config.seed, dtype="float32" if method == "gradcam" else "float16",
            backend="local", overwrite=True, **_PARAMS.get(method, {}),
        )  # fmt: skip
        result.record(
            run, data=data.images, class_names=data.class_names, examples=config.examples, name=method, overwrite=True
        )
    return (run,)
