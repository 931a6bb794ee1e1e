"""The report's attribution sections: the maps, scores and sanity curves that ``Comparison.record`` stored.

Layer 4: reads the run stores written by :meth:`deepscope.attribution.compare.Comparison.record` (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope import plots
from deepscope._format import cell
from deepscope._report_page import Figure, Section, slug
from deepscope._tags import TAGS
from deepscope.footprint import CPU_W_PER_THREAD, estimate
from deepscope.store import RunReader

__all__ = ["METRIC_HELP", "attribution_notes", "attribution_sections", "cpu_power"]


def attribution_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    sections = []
    for reader in readers:
        meta = reader.meta()
        methods = meta.get(f"{TAGS.ATTRIBUTION}/methods")
        if not methods:
            continue
        images = reader.tensor(f"{TAGS.ATTRIBUTION}/images", 0).astype(np.float32)
        rows = []
        for method in methods:
            maps = reader.tensor(f"{TAGS.ATTRIBUTION}/{method}/maps", 0).astype(np.float32)
            notes = attribution_notes(reader, method, maps.shape[0])
            rows.append(
                plots.MapRow(method, maps, signed=bool(meta.get(f"{TAGS.ATTRIBUTION}/{method}/signed")), notes=notes)
            )
        name = slug(reader.info.name)
        png = plots.attribution_grid(
            images,
            rows,
            fig_dir / f"attribution_{name}.png",
            titles=meta.get(f"{TAGS.ATTRIBUTION}/captions") or (),
            title=f"Attribution maps · {reader.info.name}",
        )
        figures = [Figure(png, "Attribution maps; under each map its per-image scores.")]
        sanity = _sanity_figure(reader, methods, fig_dir / f"sanity_{name}.png")
        if sanity is not None:
            figures.append(sanity)
        table = meta.get(f"{TAGS.ATTRIBUTION}/table") or []
        columns = [
            c
            for c in ("method", "deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask", "sanity", "seconds")
            if any(row.get(c) is not None for row in table)
        ]
        cells = [tuple(columns)] + [tuple(cell(row.get(c)) for c in columns) for row in table]
        if "seconds" in columns:  # what the explanations themselves cost
            power = cpu_power(meta)
            cells = [(*cells[0], "energy (Wh, estimated)")] + [
                (*cells[i + 1], cell(1000 * estimate(float(row["seconds"]), power_w=power).energy_kwh))
                for i, row in enumerate(table)
            ]
        notes = meta.get(f"{TAGS.ATTRIBUTION}/notes") or {}
        sections.append(
            Section(
                f"attribution-{name}",
                f"Why did the model predict this? ({reader.info.name})",
                (
                    "Each row is one explanation method, each column one input; maps are scaled per image "
                    "(non-negative maps min–max on inferno; signed maps blue < 0 < red, clipped at the 99th "
                    "percentile of |map|, transparent where 0).",
                    "Which map to trust: " + "; ".join(METRIC_HELP[c] for c in columns if c in METRIC_HELP) + ".",
                    *(
                        [
                            f"The energy column estimates each method's cost: its seconds × {cpu_power(meta):g} W "
                            f"({CPU_W_PER_THREAD:g} W per busy CPU thread, deepscope.footprint.estimate)."
                        ]
                        if "seconds" in columns
                        else []
                    ),
                    *(str(v) for v in notes.values()),
                ),
                figures=tuple(figures),
                table=tuple(cells),
            )
        )
    return sections


METRIC_HELP = {
    "deletion_auc": "deletion AUC (lower is better) measures how fast the class probability falls when the map's "
    "top pixels are removed first",
    "insertion_auc": "insertion AUC (higher is better) how fast it recovers when they are pasted onto a blurred image",
    "pointing_game": "the pointing game is the share of images whose map maximum falls on the object",
    "energy_in_mask": "energy-in-mask the share of positive attribution on the object",
    "sanity": "the sanity check randomises the weights layer by layer from the output down — a map that does not "
    "change is not explaining the model (Adebayo et al. 2018)",
}


def _sanity_figure(reader: RunReader, methods: Sequence[str], out_png: Path) -> Figure | None:
    """Similarity-vs-randomised-layers curves of the methods that went through the sanity check."""
    meta, tags = reader.meta(), set(reader.tensor_tags())
    curves, setting = [], None
    for method in methods:
        check = meta.get(f"{TAGS.ATTRIBUTION}/{method}/sanity")
        tag = f"{TAGS.ATTRIBUTION}/{method}/sanity/{check['measure']}" if check else None
        if check is None or tag not in tags:
            continue
        setting = setting or check
        similarity = np.nanmean(reader.tensor(tag, 0).astype(np.float64), axis=1)  # (L,) mean over images
        curves.append(plots.SanityCurve(method, check["layers"], similarity, bool(check["passed"])))
    if not curves or setting is None:
        return None
    path = plots.sanity_curves(curves, out_png, measure=setting["measure"], threshold=float(setting["threshold"]))
    return Figure(path, "Sanity check (Adebayo et al. 2018): similarity of each map to the intact model's map.")


def attribution_notes(reader: RunReader, method: str, n: int) -> list[str]:
    tags = set(reader.tensor_tags())
    parts: list[list[str]] = [[] for _ in range(n)]
    for metric, short in (("deletion_auc", "del"), ("insertion_auc", "ins")):
        tag = f"{TAGS.ATTRIBUTION}/{method}/{metric}"
        if tag in tags:
            for i, value in enumerate(reader.tensor(tag, 0)):
                parts[i].append(f"{short} {value:.2f}")
    tag = f"{TAGS.ATTRIBUTION}/{method}/pointing_game"
    if tag in tags:
        for i, value in enumerate(reader.tensor(tag, 0)):
            parts[i].append("hit" if value else "miss")
    return [" · ".join(p) for p in parts]


def cpu_power(meta: dict) -> float:
    """Watts of the run's busy CPU threads (as recorded when it was created; 1 thread if unknown)."""
    env = meta.get(TAGS.ENVIRONMENT) or {}
    threads = (env.get("torch") or {}).get("threads") or 1
    return float(threads) * CPU_W_PER_THREAD
