"""The report's *Feature visualisation* section: optimised images per result, and their objective curves.

Layer 4: reads what :func:`deepscope.featurevis.record_feature_vis` stored (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope._featurevis_plots import feature_vis_figure, objective_curves
from deepscope._report_page import Figure, Section, runs_holding
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["featurevis_sections"]

_P = TAGS.FEATURE_VIS


def featurevis_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per run that holds feature visualisations."""
    sections = []
    for reader, meta, name in runs_holding(readers, f"{_P}/results"):
        figures, curves, titles = [], [], []
        for i in range(len(meta[f"{_P}/results"])):
            info = meta[f"{_P}/{i}"]
            params = info["params"]
            png = feature_vis_figure(
                reader.tensor(f"{_P}/{i}/images", 0).astype(np.float32), info["labels"],
                fig_dir / f"featurevis_{name}_{i}.png", title=info["title"],
            )  # fmt: skip
            caption = (
                f"{info['objective']}: {params.get('steps')} steps of Adam (lr {params.get('lr')}) on a "
                f"{params.get('param')} image of {params.get('size')} px, {params.get('transforms')} transforms."
            )
            figures.append(Figure(png, caption))
            curves.append(reader.tensor(f"{_P}/{i}/curve", 0))
            titles.append(info["title"])
        figures.append(
            Figure(
                objective_curves(curves, titles, fig_dir / f"featurevis_curves_{name}.png"),
                "Each result's objective per step.",
            )
        )
        sections.append(
            Section(
                f"featurevis-{name}",
                f"Feature visualisation ({reader.info.name})",
                (
                    meta.get(f"{_P}/description") or "Images optimised to excite units of the network.",
                    "Olah et al. (2017): the image is a 1/f-scaled Fourier spectrum in decorrelated colour, "
                    "jittered, scaled and rotated a little at every step so that only patterns the unit responds "
                    "to robustly survive; only the image is optimised, the network is left unchanged.",
                ),
                tuple(figures),
            )
        )
    return sections
