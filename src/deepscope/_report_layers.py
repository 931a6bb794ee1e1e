"""The report's "Layers" sections: filters, top-k patches with projections, feature maps and per-layer statistics.

Layer 4: reads what :meth:`deepscope.inspection.LayerInspection.record` stored (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope import plots
from deepscope._format import cell
from deepscope._report_page import Figure, Section, runs_holding, slug
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["evolution_sections", "layer_sections"]

_P = TAGS.LAYER_VIEWS
_COLUMNS = ("layer", "channels", "mean", "std", "zero_fraction", "dead_channels", "saturation")


def layer_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per run that holds layer views."""
    sections = []
    for reader, meta, name in runs_holding(readers, f"{_P}/top"):
        figures = []
        if f"{_P}/filters" in meta:
            spec = meta[f"{_P}/filters"]
            png = plots.filter_grid(
                reader.tensor(f"{_P}/filters", 0), fig_dir / f"filters_{name}.png",
                normalize=spec["normalize"], title=f"Filters of {spec['layer']}",
            )  # fmt: skip
            figures.append(Figure(png, f"The filters of {spec['layer']} as image tiles (scale stated on the figure)."))
        for layer in meta[f"{_P}/top"]:
            base = f"{_P}/top/{layer}"
            info = meta[base]
            tags = set(reader.tensor_tags())
            projections = reader.tensor(f"{base}/projections", 0) if f"{base}/projections" in tags else None
            png = plots.top_activation_grid(
                reader.tensor(f"{base}/patches", 0).astype(np.float32),
                projections,
                reader.tensor(f"{base}/inside", 0).astype(bool),
                info["channels"],
                reader.tensor(f"{base}/scores", 0),
                fig_dir / f"top_{name}_{slug(layer)}.png",
                title=f"{reader.info.name} · {layer}",
            )
            field = info["field"]
            figures.append(
                Figure(
                    png,
                    f"{layer}: the {info['k']} images that excite each channel most (spatial maximum, distinct "
                    f"images); receptive field {field['size'][0]}×{field['size'][1]} px, one unit every "
                    f"{field['jump'][0]} px.",
                )
            )
        examples = [t for t in reader.tensor_tags() if t.startswith(f"{_P}/example/")]
        for tag in examples[:2]:
            maps = reader.tensor(tag, 0)
            if maps.ndim == 3:
                layer = tag.removeprefix(f"{_P}/example/")
                png = plots.feature_map_grid(
                    maps, fig_dir / f"maps_{name}_{slug(layer)}.png", title=f"{layer} on one input"
                )
                figures.append(Figure(png, f"The feature maps of {layer} for the first input."))
        figures.extend(_studies(reader, meta, fig_dir, name))
        rows = meta.get(f"{_P}/stats") or []
        table = (_COLUMNS, *[tuple(cell(row.get(c)) for c in _COLUMNS) for row in rows])
        sections.append(
            Section(
                f"layers-{name}",
                f"What the layers respond to ({reader.info.name})",
                (
                    f"Data: {meta.get(f'{_P}/description') or 'the given inputs'} ({meta.get(f'{_P}/images')} "
                    "images), streamed once per view. Zeiler & Fergus (2014): for each channel, the inputs whose "
                    "spatial maximum is largest, the input patch under the receptive field of that maximum unit "
                    "(measured from the network) and the unit's DeconvNet projection (only that activation kept, "
                    "unpooled through the max-pool switches, rectified, through transposed filters).",
                    "Table: per layer, the means over its channels of the mean, std and share of zeros; dead "
                    "channels never take a non-zero value on the data; saturation applies to bounded activations.",
                ),
                figures=tuple(figures),
                table=table,
            )
        )
    return sections


def _studies(reader: RunReader, meta: dict, fig_dir: Path, name: str) -> list[Figure]:
    """The recorded occlusion studies (Fig. 7) and invariance curves (Fig. 5)."""
    figures = []
    for i in range(int(meta.get(f"{_P}/occlusion") or 0)):
        base = f"{_P}/occlusion/{i}"
        info = meta[base]
        parts = {
            p: reader.tensor(f"{base}/{p}", 0)
            for p in ("image", "projection", "activation", "probability", "top_class")
        }
        png = plots.occlusion_figure(
            parts["image"], parts["projection"], parts["activation"], parts["probability"], parts["top_class"],
            fig_dir / f"occlusion_{name}_{i}.png", worst=tuple(info["worst"]), window=info["window"],
            stride=info["stride"], channel=info["channel"], layer=info["layer"], target=info["target"],
            class_names=info["class_names"], baseline=info["baseline"],
        )  # fmt: skip
        true = info["class_names"][info["target"]]
        figures.append(Figure(png, f"Occlusion study of a {true}: does the network look at the object?"))
    for transform in meta.get(f"{_P}/invariance") or []:
        base = f"{_P}/invariance/{transform}"
        info = meta[base]
        distances = {layer: reader.tensor(f"{base}/distance/{i}", 0) for i, layer in enumerate(info["layers"])}
        png = plots.invariance_figure(
            transform, reader.tensor(f"{base}/values", 0), distances, reader.tensor(f"{base}/probability", 0),
            reader.tensor(f"{base}/predicted", 0), reader.tensor(f"{base}/labels", 0),
            fig_dir / f"invariance_{name}_{transform}.png", class_names=info["class_names"],
        )  # fmt: skip
        figures.append(
            Figure(png, f"Invariance to {transform}: features of an early and a late layer, and the prediction.")
        )
    return figures


_EVOLUTION_COLUMNS = 8  # snapshots shown, evenly spaced from the first to the last (the paper shows 8 epochs)


def evolution_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per training run that recorded the feature evolution probe."""
    sections = []
    for reader in readers:
        meta = reader.meta()
        figures = []
        for layer in meta.get(TAGS.EVOLUTION_LAYERS) or []:
            base = TAGS.EVOLUTION.format(layer=layer)
            info = meta.get(base)
            if info is None:
                continue
            steps = reader.tensor_steps(f"{base}/patches")
            shown = np.unique(np.linspace(0, len(steps) - 1, min(_EVOLUTION_COLUMNS, len(steps))).round().astype(int))
            chosen = [int(steps[i]) for i in shown]
            patches = np.stack([reader.tensor(f"{base}/patches", s).astype(np.float32) for s in chosen])
            projections = np.stack([reader.tensor(f"{base}/projections", s) for s in chosen])
            out = fig_dir / f"evolution_{slug(reader.info.name)}_{slug(layer)}.png"
            png = plots.evolution_strip(
                chosen, patches, projections, info["channels"], out, title=f"{reader.info.name} · {layer}"
            )  # fmt: skip
            figures.append(Figure(png, f"How the strongest units of {layer} form during training."))
        if figures:
            sections.append(
                Section(
                    f"evolution-{slug(reader.info.name)}",
                    f"Feature evolution during training ({reader.info.name})",
                    (
                        "Zeiler & Fergus (2014, Fig. 4): at each snapshot, the probe image that excites each channel "
                        "most, the input patch under that unit's receptive field and its DeconvNet projection. Lower "
                        "layers settle within a few epochs; the features of upper layers keep changing longer.",
                    ),
                    figures=tuple(figures),
                )
            )
    return sections
