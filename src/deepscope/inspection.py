"""One call for the layer views of a model on a dataset, recorded as a run the report draws.

:func:`inspect_layers` gathers the first convolution's filters (:mod:`deepscope.filter_bank`), the
streamed statistics of the chosen layers (:func:`deepscope.layer_stats.activations`) and, for each
of them, the Zeiler–Fergus top-k with patches and DeconvNet projections
(:func:`deepscope.layer_stats.top_activations`). :meth:`LayerInspection.record` writes it all to a
run store under the ``layers/`` tags; the report's "Layers" section reads them back (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from deepscope._tags import TAGS
from deepscope.filter_bank import FilterBank, filters
from deepscope.layer_stats import ActivationStats, TopActivations, activations, top_activations
from deepscope.layers import LayerSpec, is_layer, resolve_layers
from deepscope.occlusion import OcclusionStudy
from deepscope.repro import library_versions
from deepscope.robustness import InvarianceCurves
from deepscope.store import RunWriter, delete_run

__all__ = ["LayerInspection", "inspect_layers"]


@dataclass(frozen=True, slots=True)
class LayerInspection:
    """Filters, per-channel statistics and top-k views of some layers on one dataset.

    ``occlusion`` and ``invariance`` hold optional occlusion studies and invariance curves of some of
    its images (add them with ``dataclasses.replace``); they are recorded and reported too.
    """

    filters: FilterBank | None
    stats: ActivationStats
    top: dict[str, TopActivations]
    description: str = ""
    occlusion: tuple[OcclusionStudy, ...] = ()
    invariance: tuple[InvarianceCurves, ...] = ()

    def record(self, run_dir: str | os.PathLike[str], *, name: str = "layers", overwrite: bool = False) -> Path:
        """Write everything into the run store at ``run_dir`` (``layers/`` tags); return the folder."""
        path = Path(run_dir)
        if overwrite:
            delete_run(path)
        prefix = TAGS.LAYER_VIEWS
        with RunWriter(
            path, name=name, config={"task": "layers", "data": self.description}, versions=library_versions()
        ) as w:
            w.set_meta(f"{prefix}/description", self.description)
            if self.filters is not None:
                w.set_meta(f"{prefix}/filters", {"layer": self.filters.layer, "normalize": self.filters.normalize})
                w.add_tensor(f"{prefix}/filters", 0, self.filters.weights.numpy())
            w.set_meta(f"{prefix}/stats", self.stats.table())
            w.set_meta(f"{prefix}/images", self.stats.images)
            for layer, stats in self.stats.layers.items():
                w.add_tensor(f"{prefix}/example/{layer}", 0, stats.example.numpy())
            w.set_meta(f"{prefix}/top", list(self.top))
            for layer, top in self.top.items():
                base = f"{prefix}/top/{layer}"
                field = {"size": list(top.field.size), "jump": list(top.field.jump), "start": list(top.field.start)}
                w.set_meta(base, {"field": field, "channels": top.channels.tolist(), "k": int(top.scores.shape[1])})
                w.add_tensor(f"{base}/scores", 0, top.scores.numpy())
                w.add_tensor(f"{base}/indices", 0, top.indices.numpy())
                w.add_tensor(f"{base}/patches", 0, top.patches.numpy().astype(np.float16))
                w.add_tensor(f"{base}/inside", 0, top.inside.numpy().astype(np.uint8))
                if top.projections is not None:
                    w.add_tensor(f"{base}/projections", 0, top.projections.numpy().astype(np.float32))
            _record_studies(w, self.occlusion, self.invariance)
        return path


def inspect_layers(
    model: nn.Module,
    data: Any,
    layers: LayerSpec | Sequence[LayerSpec],
    *,
    channels: Sequence[int] | Tensor | None = None,
    k: int = 9,
    batch_size: int = 256,
    filters_layer: LayerSpec | None = None,
    description: str = "",
) -> LayerInspection:
    """Filters of the first convolution (or ``filters_layer``), statistics and top-``k`` of each of ``layers``.

    Args:
        model: the network (left unchanged).
        data: images as a tensor ``(N, C, H, W)``, a dataset or an unshuffled ``DataLoader``.
        layers: the spatial layers to inspect.
        channels: the channels of each layer whose top-k are computed (default: the first 8).
        k: images per channel.
        batch_size: inputs per forward pass.
        filters_layer: the convolution whose filters are drawn (default: the first ``Conv2d``; None if there is none).
        description: what the data is, for the report.
    """
    watched = resolve_layers(model, layers)
    bank = filters(model, filters_layer) if filters_layer is not None or _has_conv(model) else None
    stats = activations(model, data, list(watched), batch_size=batch_size)
    top = {}
    for name in watched:
        count = int(stats.layers[name].mean.numel())
        chosen = channels if channels is not None else list(range(min(8, count)))
        top[name] = top_activations(model, data, name, chosen, k, batch_size=batch_size)
    return LayerInspection(bank, stats, top, description)


def _record_studies(w: RunWriter, occlusion: Sequence[OcclusionStudy], curves: Sequence[InvarianceCurves]) -> None:
    prefix = TAGS.LAYER_VIEWS
    w.set_meta(f"{prefix}/occlusion", len(occlusion))
    for i, study in enumerate(occlusion):
        base = f"{prefix}/occlusion/{i}"
        w.set_meta(
            base,
            {
                "layer": study.layer, "channel": study.channel, "target": study.target, "worst": list(study.worst),
                "window": study.window, "stride": study.stride, "class_names": list(study.class_names),
                "baseline": study.baseline,
            },
        )  # fmt: skip
        for part in ("image", "projection", "activation", "probability", "top_class"):
            w.add_tensor(f"{base}/{part}", 0, getattr(study, part).numpy())
    w.set_meta(f"{prefix}/invariance", [c.transform for c in curves])
    for c in curves:
        base = f"{prefix}/invariance/{c.transform}"
        w.set_meta(base, {"layers": list(c.distances), "class_names": list(c.class_names)})
        for part in ("values", "probability", "predicted", "labels"):
            w.add_tensor(f"{base}/{part}", 0, getattr(c, part).numpy())
        for i, distance in enumerate(c.distances.values()):
            w.add_tensor(f"{base}/distance/{i}", 0, distance.numpy())


def _has_conv(model: nn.Module) -> bool:
    return any(is_layer(m, nn.Conv2d) for m in model.modules())
