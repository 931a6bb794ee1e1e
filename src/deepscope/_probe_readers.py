"""What the report and the dashboard both read from a run's probe: class names, and layer snapshots as 2-D frames."""

from __future__ import annotations

import numpy as np

from deepscope import plots
from deepscope._tags import TAGS
from deepscope.projection import Projection, project_frames
from deepscope.store import RunReader

__all__ = ["class_names", "scatter_sequence"]


def scatter_sequence(reader: RunReader, tag: str, projection: Projection) -> plots.ScatterSequence:
    """The probe's points in layer snapshot ``tag`` at every step with predictions: 2-D, aligned, with correctness."""
    labels = reader.tensor(TAGS.PROBE_LABELS, 0)
    steps, values = reader.tensors(tag)
    pred_steps, preds = reader.tensors(TAGS.PROBE_PRED)
    pred_by_step = dict(zip(pred_steps.tolist(), preds, strict=False))
    keep = [i for i, s in enumerate(steps.tolist()) if s in pred_by_step]
    steps = steps[keep]
    points = project_frames([values[i] for i in keep], projection)
    correct = np.stack([pred_by_step[s] == labels for s in steps.tolist()])  # (F, N)
    return plots.ScatterSequence(
        label=reader.info.name,
        steps=steps,
        points=points,
        correct=correct,
        labels=labels,
        accuracy=correct.mean(axis=1),
    )


def class_names(reader: RunReader) -> list[str]:
    """The run's class names, else ``class 0``, ``class 1``… up to the probe's largest label."""
    names = reader.meta().get(TAGS.CLASS_NAMES)
    if names:
        return [str(n) for n in names]
    labels = reader.tensor(TAGS.PROBE_LABELS, 0) if TAGS.PROBE_LABELS in reader.tensor_tags() else np.array([0, 1])
    return [f"class {i}" for i in range(int(labels.max()) + 1)]
