"""``deepscope demo spurious``: the same CNN trained on clean and on biased shapes, evaluated and audited.

Seed 000 §1 (the classifier that looks at the background) and seed 003 (the portable X-ray
scanner), made measurable: in the biased training set a coloured corner marker shows the image's
class 95 % of the time (:func:`deepscope.datasets.shapes`' ``cue``); in the clean one it is there
but independent of the class. Both CNNs are evaluated on the same de-biased held-out set (marker
independent of the class), with the object masks (the cue audit) and the groups "marker agrees
with the class" / "marker disagrees". The biased CNN scores high on biased data, falls to chance on
the de-biased set, loses everything where the marker disagrees, and is flagged: its Grad-CAM sits on
the corner. The clean CNN is not flagged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deepscope.datasets import shapes
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.demos.shapes_cnn import ShapesCNNConfig, accuracy, train_shapes_cnn
from deepscope.evaluation import evaluate
from deepscope.registry import DEMOS

__all__ = ["SpuriousConfig", "record"]


@dataclass(frozen=True)
class SpuriousConfig:
    """Settings of the demo (``deepscope demo spurious --set agreement=0.9``)."""

    agreement: float = 0.95  # how often the biased training set's marker shows the true class
    seed: int = 0
    epochs: int = 8
    audit_samples: int = 512


@DEMOS.register("spurious")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Train (or load from the cache) the clean and the biased CNN, evaluate both on de-biased data, record."""
    config = apply_overrides(SpuriousConfig(audit_samples=128) if quick else SpuriousConfig(), overrides or {})
    out = Path(out_dir)
    clear_runs(out)
    runs = []
    for label, agreement in (("clean", 0.0), ("biased", config.agreement)):
        model, held_out = train_shapes_cnn(seed=config.seed, epochs=config.epochs, cue=agreement)
        train_like = shapes(1000, seed=20_000 + config.seed, cue=agreement, radius=ShapesCNNConfig().radius)
        agrees = (held_out.cues == held_out.labels).tolist()
        groups = ["marker agrees" if a else "marker disagrees" for a in agrees]
        result = evaluate(
            model,
            (held_out.images, held_out.labels),
            held_out.class_names,
            groups=groups,
            masks=held_out.masks,
            audit_samples=config.audit_samples,
            description=(
                f"de-biased held-out shapes (corner marker independent of the class) — a CNN trained with the "
                f"marker showing the class {agreement:.0%} of the time; accuracy on images like its training "
                f"set: {accuracy(model, train_like):.3f}"
            ),
        )
        runs.append(result.record(out / label, name=f"{label} training: evaluation", overwrite=True))
    return tuple(runs)
