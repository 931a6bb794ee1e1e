"""The report's *Layer health* section: per-layer statistics of the training step, and the gradient flow.

:data:`HEALTH_PANELS` (which statistics are drawn, and how) is shared with the dashboard's health panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepscope import plots
from deepscope._report_page import Figure, Section, slug
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["HEALTH_PANELS", "health_section"]

_MAX_RUNS = 4  # runs whose gradient flow is drawn side by side

HEALTH_PANELS = {  # statistic: (title, log scale, colour limits, activation modules only)
    "act_std": ("activation std", True, None, False),
    "dead_channels": ("dead channels (share)", False, (0.0, 1.0), True),
    "saturation": ("saturated outputs (share)", False, (0.0, 1.0), True),
    "grad_norm": ("gradient norm", True, None, False),
    "update_ratio": ("update / weight ratio", True, None, False),
}


def health_section(readers: Sequence[RunReader], fig_dir: Path) -> Section | None:
    """Per-layer statistics of the training step (a heat map per run) and the gradient flow of the first runs."""
    usable = [r for r in readers if TAGS.HEALTH in r.tensor_tags()]
    if not usable:
        return None
    figures, flows, notes = [], [], []
    for reader in usable:
        meta = reader.meta()
        layers, statistics = list(meta[TAGS.HEALTH_LAYERS]), list(meta[TAGS.HEALTH_STATISTICS])
        steps = reader.tensor_steps(TAGS.HEALTH)
        table = np.stack([reader.tensor(TAGS.HEALTH, int(step)) for step in steps], axis=-1)  # (S, L, T)
        activations = set(meta.get(TAGS.HEALTH_ACTIVATION_LAYERS, layers))
        panels = []
        for statistic, (title, log, limits, activation_only) in HEALTH_PANELS.items():
            values = table[statistics.index(statistic)]  # (L, T)
            rows = [
                j
                for j in range(len(layers))
                if not np.isnan(values[j]).all() and (layers[j] in activations or not activation_only)
            ]
            if rows:
                panels.append(plots.HealthPanel(title, [layers[j] for j in rows], values[rows], log, limits))
        if TAGS.RESIDUAL in reader.tensor_tags():
            residual_steps = reader.tensor_steps(TAGS.RESIDUAL)
            ratios = np.stack([reader.tensor(TAGS.RESIDUAL, int(step)) for step in residual_steps], axis=-1)
            if np.array_equal(residual_steps, steps):
                blocks = list(meta[TAGS.RESIDUAL_BLOCKS])
                panels.append(plots.HealthPanel("residual ‖F(x)‖ / ‖skip‖", blocks, ratios, log=True))
        run = slug(reader.info.name)
        if panels:
            png = plots.health_heatmaps(
                steps, panels, fig_dir / f"health_{run}.png", title=f"Layer health · {reader.info.name}"
            )
            figures.append(Figure(png, f"Per-layer statistics of the training step, {reader.info.name}."))
        else:
            notes.append(f"{reader.info.name}: no layer statistic was measured (no value in any recorded step).")
        grads = table[statistics.index("grad_norm")]
        rows = [j for j in range(len(layers)) if not np.isnan(grads[j]).all()]
        if rows:
            flows.append((reader.info.name, [layers[j] for j in rows], steps, grads[rows]))
        if TAGS.HEALTH_NONFINITE in meta:
            notes.append(f"{reader.info.name}: non-finite values from step {meta[TAGS.HEALTH_NONFINITE]} on.")
    if flows:
        flow = plots.gradient_flow(flows[:_MAX_RUNS], fig_dir / "gradient_flow.png")
        figures.append(Figure(flow, "Gradient norm of each layer's parameters, input side on the left."))
    return Section(
        "health",
        "Layer health during training",
        (
            "Measured on the training step itself, every few steps, for every layer with parameters and every "
            "activation module (rows, input side on top). How to read it: a dead-channel share that grows means "
            "ReLU units that never fire again; gradient norms that fall by orders of magnitude towards the input "
            "mean vanishing gradients (the early layers stop learning), rising ones exploding gradients; an "
            "update/weight ratio far below 1e-3 is a layer that barely moves, far above it one that is unstable. "
            "For residual blocks, ‖F(x)‖ / ‖skip‖ far below 1 means the block barely changes its input.",
            *notes,
        ),
        figures=tuple(figures),
    )
