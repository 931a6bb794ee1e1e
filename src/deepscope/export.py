"""Export recorded runs to TensorBoard event files, for users who live in TensorBoard.

Every scalar tag keeps its name; layer health becomes ``health/<statistic>/<layer>`` scalars
(values that were not measured, NaN by design, are skipped), residual ratios
``residual/<block>``, recorded distributions ``activations/<layer>`` and ``weights/<layer>``
histograms, image media ``add_image`` images and the run's configuration a text entry. Wall
times are kept, so TensorBoard's relative and wall-time axes show the original run.
Needs the ``tensorboard`` package (``pip install tensorboard``).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepscope._distribution_summary import split_summary
from deepscope._tags import TAGS
from deepscope.store import RunReader, find_runs

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["export_tensorboard"]


def export_tensorboard(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the runs at or below ``run_dir`` as TensorBoard logs under ``out_dir``; return the log folders.

    A single run is written to ``out_dir`` itself; several runs each get the sub-folder they have
    below ``run_dir``, so ``tensorboard --logdir OUT_DIR`` shows them side by side.

    Raises:
        FileNotFoundError: no run at or below ``run_dir``.
        ImportError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises this when the tensorboard package is missing
        raise ImportError("export-tensorboard needs TensorBoard: pip install tensorboard") from err
    root, out = Path(run_dir), Path(out_dir)
    runs = find_runs(root)
    written = []
    for run in runs:
        target = out if run == root else out / run.relative_to(root)
        with RunReader(run) as reader, SummaryWriter(log_dir=str(target)) as writer:
            _export_run(reader, writer)
        written.append(target)
    return written


def _export_run(reader: RunReader, writer: SummaryWriter) -> None:
    info = reader.info
    writer.add_text("run/config", f"```\n{json.dumps(info.config, indent=2, sort_keys=True)}\n```", 0)
    for tag in reader.scalar_tags():
        series = reader.scalars(tag)
        for step, wall, value in zip(series.steps, series.wall_times, series.values, strict=True):
            writer.add_scalar(tag, value, int(step), walltime=float(wall))
    meta, tensor_tags = reader.meta(), set(reader.tensor_tags())
    if TAGS.HEALTH in tensor_tags:
        _export_table(reader, writer, TAGS.HEALTH, meta[TAGS.HEALTH_STATISTICS], meta[TAGS.HEALTH_LAYERS])
    if TAGS.RESIDUAL in tensor_tags:
        steps, ratios = reader.tensors(TAGS.RESIDUAL)
        for step, row in zip(steps, ratios, strict=True):
            for block, value in zip(meta[TAGS.RESIDUAL_BLOCKS], row, strict=True):
                writer.add_scalar(f"residual/{block}", float(value), int(step))
    if TAGS.DISTRIBUTIONS in tensor_tags:
        _export_histograms(reader, writer, meta[TAGS.HEALTH_LAYERS])
    for record in reader.media():
        if record.kind == "image" and record.path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            writer.add_image(record.tag, _read_image(record.path), record.step, dataformats="HWC")


def _export_table(reader: RunReader, writer: SummaryWriter, tag: str, statistics: list[str], layers: list[str]) -> None:
    steps, tables = reader.tensors(tag)
    for step, table in zip(steps, tables, strict=True):
        for i, statistic in enumerate(statistics):
            for j, layer in enumerate(layers):
                if not np.isnan(table[i, j]):  # NaN: not measured by design; ±inf (divergence) is kept
                    writer.add_scalar(f"health/{statistic}/{layer}", float(table[i, j]), int(step))


def _export_histograms(reader: RunReader, writer: SummaryWriter, layers: list[str]) -> None:
    steps, tables = reader.tensors(TAGS.DISTRIBUTIONS)
    for step, table in zip(steps, tables, strict=True):  # table: (layers, output|weights, summary)
        for j, layer in enumerate(layers):
            for kind, prefix in enumerate(("activations", "weights")):
                dist = split_summary(table[j, kind])
                if dist is None or dist.total == 0:
                    continue
                centres = (dist.edges[:-1] + dist.edges[1:]) / 2  # the sums are estimated from the bins
                writer.add_histogram_raw(
                    f"{prefix}/{layer}",
                    min=float(dist.edges[0]),
                    max=float(dist.edges[-1]),
                    num=dist.total,
                    sum=float((centres * dist.counts).sum()),
                    sum_squares=float((centres**2 * dist.counts).sum()),
                    bucket_limits=dist.edges[1:].tolist(),
                    bucket_counts=dist.counts.tolist(),
                    global_step=int(step),
                )


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return np.asarray(image.convert("RGB"))
