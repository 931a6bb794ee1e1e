"""The report's *Dataset explanations* section: what each dataset-wide explanation covered, cost and shows per class.

Layer 4: reads what :meth:`deepscope.scale.DatasetExplanation.record` stored under ``explain_dataset/<name>``
(no torch; the shards themselves stay in their folder). Class names and error messages come from the
user and the workers; the page template escapes them like every other string.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepscope._explanation_files import class_label
from deepscope._report_page import Figure, Section, slug
from deepscope._scale_plots import class_means_figure, examples_figure
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["scale_sections"]

_P = TAGS.EXPLAIN_DATASET  # the prefix deepscope.scale._record writes under
_COLUMNS = ("record", "method", "layer", "target", "items covered", "shards", "backend", "seconds", "items/s",
            "bytes", "failed shards")  # fmt: skip


def scale_sections(readers: Sequence[RunReader], fig_dir: Path) -> list[Section]:
    """One section per run that holds dataset explanations: a table of all of them, and each one's figures."""
    sections = []
    for reader in readers:
        meta = reader.meta()
        records = {key.removeprefix(f"{_P}/"): meta[key] for key in sorted(meta) if key.startswith(f"{_P}/")}
        if not records:
            continue
        run = slug(reader.info.name)
        rows, figures, notes, folders = [_COLUMNS], [], [], []
        for name, info in records.items():
            rows.append(_row(name, info))
            figures.extend(_figures(reader, name, info, fig_dir / f"explain_dataset_{run}_{slug(name)}"))
            folders.append(f"{name}: {info['path']}")
            notes.extend(
                f"{name}: shard {f['shard']} (items {f['start']}–{f['stop'] - 1}) failed after {f['attempts']} "
                f"attempt(s): {f['error']}"
                for f in info["failed"]
            )
        sections.append(
            Section(
                f"explain-dataset-{run}",
                f"Dataset explanations ({reader.info.name})",
                (
                    "Each row is one explanation of a whole dataset (deepscope.explain_dataset): every item explained "
                    "in shards of consecutive items, locally or on Ray workers, the maps written as compressed files "
                    "in the folder listed below (the run holds only this summary and a few examples). A shard that "
                    "failed after its retries is listed with the items it left out; those items have no map.",
                    "The class means average each item's |map| after min–max scaling it to [0, 1] per item: they "
                    "show where the maps of a class concentrate, not how strong they are. A mean that sits on the "
                    "object's usual place is expected; one on the border, a corner or the background means the "
                    "model's evidence for that class lies there (a shortcut worth auditing).",
                    "Shard folders: " + "; ".join(folders) + ".",
                ),
                figures=tuple(figures),
                table=tuple(rows),
                notes=tuple(notes),
            )
        )
    return sections


def _row(name: str, info: dict[str, Any]) -> tuple[str, ...]:
    failed = "; ".join(f"shard {f['shard']}: items {f['start']}–{f['stop'] - 1}" for f in info["failed"])
    speed = info.get("items_per_second")
    return (
        name, info["method"], info["layer"] or "—", info["target"], f"{info['covered']} / {info['items']}",
        str(info["shards"]), info["backend"], f"{info['seconds']:.2f}", f"{speed:.1f}" if speed is not None else "—",
        f"{info['bytes']:,}", failed or "none",
    )  # fmt: skip


def _figures(reader: RunReader, name: str, info: dict[str, Any], base: Path) -> list[Figure]:
    """The per-class mean maps, and the examples when they were recorded."""
    key = f"{_P}/{name}"
    classes = reader.tensor(f"{key}/classes", 0)
    counts = reader.tensor(f"{key}/class_counts", 0)
    labels = {int(k): class_label(int(k), info["class_names"]) for k in classes}
    counted = [f"{labels[int(k)]} · {int(n)}" for k, n in zip(classes, counts, strict=True)]
    means = reader.tensor(f"{key}/class_means", 0)
    if means.ndim == 2:  # (K, L): maps of vector inputs, drawn as one strip per class
        means = means[:, None]
    png = class_means_figure(
        means, counted, base.with_name(f"{base.name}_means.png"),
        title=f"{name}: mean map per explained class (class · items)",
    )  # fmt: skip
    figures = [
        Figure(
            png,
            f"{name}: the mean scaled |map| of each explained class, {info['method']} maps ({info['target']} class) "
            f"of {info['covered']} items; items per class: {', '.join(counted)}.",
        )
    ]
    if f"{key}/examples/inputs" in reader.tensor_tags() and len(inputs := reader.tensor(f"{key}/examples/inputs", 0)):
        targets = reader.tensor(f"{key}/examples/targets", 0)
        positions = reader.tensor(f"{key}/examples/positions", 0)
        rows = [(labels[int(k)], np.flatnonzero(targets == k).tolist()) for k in classes if (targets == k).any()]
        png = examples_figure(
            inputs, reader.tensor(f"{key}/examples/maps", 0), rows, [f"item {p}" for p in positions],
            base.with_name(f"{base.name}_examples.png"), title=f"{name}: the first covered items of each class",
        )  # fmt: skip
        figures.append(
            Figure(png, f"{name}: the first covered items of each explained class; beside each, its map over it.")
        )
    return figures
