"""What the Recorder measures: one probe per kind of measurement, listed in the registry ``PROBES``.

A probe runs on one of three schedules (its ``schedule``) and overrides that schedule's methods:

- ``"step"``, every step: :meth:`Probe.step_values` returns scalars of the step just reported
  (loss, learning rate, throughput). Tensor values stay on their device until the Recorder's next
  batched flush.
- ``"measured"``, one training step in ``every``: :meth:`Probe.arm` registers hooks (in the
  Recorder's :class:`~deepscope.hooks.HookSet`, removed as soon as the step is read) before that
  step runs, and :meth:`Probe.measure` returns device tensors after its optimiser step. The
  Recorder moves every probe's tensors to the host in one transfer, averages them over the ranks
  under ``torch.distributed`` (unless the probe's ``averaged`` is off), stores each under its tag
  and flags the first step where :meth:`Probe.nonfinite` sees a diverging value.
- ``"snapshot"``, at step 0, every ``snapshot_every`` steps and at the end: the model runs once over
  the probe set in eval mode without gradients (model restored afterwards); each probe names the
  layers it wants from that pass (:meth:`Probe.snapshot_layers`) and stores what it saw
  (:meth:`Probe.snapshot`).

Every probe writes its run-level meta in :meth:`Probe.start` and lists the tags it writes in
``tags`` (``{…}`` marks a part filled per layer or metric). The built-in probes, and the
Recorder arguments that switch them on: ``scalars`` (always), ``learning_rate``
(``optimizer=``), ``throughput`` (``rec.step(batch_size=)``), ``layer_health`` (``health=``,
:mod:`deepscope.health`), ``distributions`` (``histogram_bins=``), ``residual_flow``
(``residual=``, :mod:`deepscope.residual`), ``predictions`` (``probe=``), ``representations``
(``layers=``), ``decision_map`` (2-D probe inputs) and ``feature_evolution`` (Zeiler & Fergus's
Fig. 4, passed as ``probes=[FeatureEvolution(model, layer)]``). Add your own with
``Recorder(..., probes=[MyProbe()])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from deepscope._probe import PROBES, Probe, ProbePass, StepInfo, register, scalar
from deepscope._store_writer import RunWriter
from deepscope._tags import TAGS
from deepscope.health import Distributions, LayerHealth
from deepscope.residual import ResidualFlow

__all__ = [
    "PROBES",
    "DecisionMap",
    "Distributions",
    "FeatureEvolution",
    "LayerHealth",
    "LearningRate",
    "PredictRule",
    "Predictions",
    "Probe",
    "ProbePass",
    "Representations",
    "ResidualFlow",
    "Scalars",
    "StepInfo",
    "Throughput",
]

PredictRule = Literal["auto", "argmax", "logit", "probability"] | Callable[[Tensor], Tensor]

_PROBE_INPUTS_MAX_NUMEL = 200_000  # probe inputs are stored only when small (e.g. 2-D toy points)


@register("scalars")
class Scalars(Probe):
    """The loss and the user's metrics of every step, and the wall-clock time between steps.

    Tags: ``train/loss``, ``train/<metric>`` (``rec.step(metrics={...})``), ``train/step_time_s``;
    every scalar row also stores its wall time. Validation metrics (``rec.eval_step``) go to
    ``eval/<metric>`` on the same step axis.
    """

    schedule = "step"
    tags = (TAGS.LOSS, TAGS.TRAIN_METRIC, TAGS.STEP_TIME)

    def step_values(self, info: StepInfo) -> Mapping[str, float | Tensor]:
        values: dict[str, float | Tensor] = {}
        if info.loss is not None:
            values[TAGS.LOSS] = scalar(info.loss)
        for key, value in info.metrics.items():
            values[TAGS.TRAIN_METRIC.format(name=key)] = scalar(value)
        values[TAGS.STEP_TIME] = info.seconds
        return values


@register("learning_rate")
class LearningRate(Probe):
    """The learning rate of every parameter group of ``optimizer`` at every step, schedulers included.

    Tags: ``train/lr`` for one group, ``train/lr/<i>`` for several.
    """

    schedule = "step"
    tags = (TAGS.LR,)

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer

    def step_values(self, info: StepInfo) -> Mapping[str, float | Tensor]:
        groups = self.optimizer.param_groups
        return {TAGS.LR if len(groups) == 1 else f"{TAGS.LR}/{i}": scalar(g["lr"]) for i, g in enumerate(groups)}


@register("throughput")
class Throughput(Probe):
    """Samples per second of every step that reports its ``batch_size`` (``rec.step(..., batch_size=n)``).

    Tag: ``train/samples_per_s`` (summed over the ranks under ``torch.distributed``).
    """

    schedule = "step"
    tags = (TAGS.SAMPLES_PER_S,)

    def step_values(self, info: StepInfo) -> Mapping[str, float | Tensor]:
        if info.batch_size is None:
            return {}
        size = info.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive int (samples in this step), got {size!r}")
        return {TAGS.SAMPLES_PER_S: size / max(info.seconds, 1e-9)}


@register("predictions")
class Predictions(Probe):
    """Probe-set predictions at every snapshot, and how good they are against the baseline that matters.

    Tags: ``probe/accuracy`` and ``probe/balanced_accuracy`` (scalars), ``probe/output`` (raw
    outputs) and ``probe/pred`` (classes) per snapshot; once per run ``probe/labels``,
    ``probe/inputs`` (when under 200,000 values) and the meta ``probe/majority_baseline`` — the
    accuracy of always answering the most frequent class.

    Args:
        predict: how outputs become classes: ``"argmax"`` for ``(N, C)`` outputs, ``"logit"`` (``> 0``)
            or ``"probability"`` (``> 0.5``) for one output column, or a callable; ``"auto"`` is
            argmax and refuses single-column outputs, which are ambiguous.
    """

    schedule = "snapshot"
    tags = (
        TAGS.ACCURACY, TAGS.BALANCED_ACCURACY, TAGS.PROBE_OUTPUT, TAGS.PROBE_PRED, TAGS.PROBE_LABELS,
        TAGS.PROBE_INPUTS, TAGS.MAJORITY_BASELINE,
    )  # fmt: skip

    def __init__(self, inputs: Tensor, labels: Tensor, predict: PredictRule = "auto") -> None:
        self.inputs, self.labels, self.predict = inputs, labels, check_predict(predict)

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        if resumed:
            return
        counts = np.bincount(self.labels.numpy())
        run.set_meta(TAGS.MAJORITY_BASELINE, float(counts.max() / counts.sum()))
        run.add_tensor(TAGS.PROBE_LABELS, 0, self.labels.numpy().astype(np.int64))
        if self.inputs.numel() <= _PROBE_INPUTS_MAX_NUMEL:
            run.add_tensor(TAGS.PROBE_INPUTS, 0, self.inputs.float().cpu().numpy())

    def snapshot(self, run: RunWriter, view: ProbePass) -> None:
        pred = predicted_classes(view.outputs, self.predict)
        correct = pred == view.labels.to(pred.device)
        run.add_scalars(
            view.step,
            {
                TAGS.ACCURACY: correct.float().mean().item(),
                TAGS.BALANCED_ACCURACY: balanced_accuracy(pred.cpu(), view.labels),
            },
        )
        run.add_tensor(TAGS.PROBE_OUTPUT, view.step, view.outputs.float().cpu().numpy())
        run.add_tensor(TAGS.PROBE_PRED, view.step, pred.cpu().numpy().astype(np.int64))


@register("representations")
class Representations(Probe):
    """The outputs of chosen layers on the probe set at every snapshot, as ``(N, D)`` floats.

    Feature maps ``(N, C, H, W)`` wider than ``max_dims`` are average-pooled to the finest ``s × s``
    grid with ``C·s² <= max_dims`` (cheap, and unlike a random projection of the flattened map it
    keeps the coarse spatial layout); what is still wider is reduced with a fixed Gaussian random
    projection. Both are recorded in the meta. The report projects the snapshots to 2-D (PCA or
    UMAP, aligned between frames) and animates them.

    Tags: ``repr/<layer>`` per snapshot; meta ``repr/layers``, ``repr/pooling/<layer>``,
    ``repr/projection/<layer>``.
    """

    schedule = "snapshot"
    tags = (TAGS.REPR, TAGS.LAYERS)

    def __init__(self, layers: Mapping[str, nn.Module], max_dims: int = 512) -> None:
        if max_dims < 2:
            raise ValueError(f"max_dims must be >= 2, got {max_dims}")
        self.layers, self.max_dims = dict(layers), max_dims
        self._meta: dict[str, object] = {}  # pooling / projection notes, written at the next snapshot
        self._projections: dict[str, Tensor] = {}

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        run.set_meta(TAGS.LAYERS, list(self.layers))

    def snapshot_layers(self) -> Mapping[str, nn.Module]:
        return self.layers

    def reduce_batch(self, layer: str, output: Tensor) -> Tensor:
        if output.ndim == 4 and output[0].numel() > self.max_dims:
            grid = max(1, min(math.isqrt(self.max_dims // output.shape[1]), *output.shape[2:]))
            self._meta.setdefault(
                f"{TAGS.POOLING}/{layer}",
                {
                    "kind": "adaptive_avg_pool",
                    "grid": [grid, grid],
                    "from": list(output.shape[1:]),
                    "to": output.shape[1] * grid * grid,
                },
            )
            output = nn.functional.adaptive_avg_pool2d(output, grid)
        return output.flatten(1).float()

    def snapshot(self, run: RunWriter, view: ProbePass) -> None:
        for layer in self.layers:
            if layer not in view.layer_outputs:
                raise RuntimeError(f"layer {layer!r} was not called during the forward pass of the probe set")
            run.add_tensor(TAGS.REPR.format(layer=layer), view.step, self._project(layer, view.layer_outputs[layer]))
        for key, value in self._meta.items():
            run.set_meta(key, value)
        self._meta = {}

    def _project(self, layer: str, values: Tensor) -> np.ndarray:
        """Reduce ``(N, D)`` values to at most ``max_dims`` columns with a fixed random projection."""
        width = values.shape[1]
        if width > self.max_dims:
            if layer not in self._projections:
                generator = torch.Generator().manual_seed(0)
                matrix = torch.randn(width, self.max_dims, generator=generator) / self.max_dims**0.5
                self._projections[layer] = matrix.to(values.device)
                self._meta[f"{TAGS.PROJECTION}/{layer}"] = {
                    "kind": "gaussian_random",
                    "seed": 0,
                    "from": width,
                    "to": self.max_dims,
                }
            values = values @ self._projections[layer]  # (N, D) @ (D, max_dims)
        return values.cpu().numpy()


@register("decision_map")
class DecisionMap(Probe):
    """For 2-D probe inputs and a binary task: the model's class-1 probability on a grid at every snapshot.

    The grid (``side × side`` points) covers the probe points' bounding box with a 5 % margin.
    Tags: ``input/grid_score`` (``(side, side)``, rows along y) per snapshot; meta ``input/grid_extent``.
    Outputs that are not binary, or a callable ``predict``, record nothing.
    """

    schedule = "snapshot"
    tags = (TAGS.GRID_SCORE, TAGS.GRID_EXTENT)

    def __init__(self, points: Tensor, side: int = 60, predict: PredictRule = "auto") -> None:
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"a decision map needs 2-D probe points (N, 2), got {tuple(points.shape)}")
        self.side, self.predict = side, predict
        self.grid, self.extent = _grid_over(points, side)

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        run.set_meta(TAGS.GRID_EXTENT, self.extent)

    def snapshot(self, run: RunWriter, view: ProbePass) -> None:
        if callable(self.predict) or not _is_binary(view.outputs):
            return
        scores = self._positive_score(view.forward(self.grid))
        run.add_tensor(TAGS.GRID_SCORE, view.step, scores.reshape(self.side, self.side).float().cpu().numpy())

    def _positive_score(self, outputs: Tensor) -> Tensor:
        """Probability of class 1."""
        if outputs.ndim == 2 and outputs.shape[1] == 2:
            return outputs.softmax(dim=1)[:, 1]
        flat = outputs.flatten()
        return torch.sigmoid(flat) if self.predict == "logit" else flat


def check_predict(rule: PredictRule) -> PredictRule:
    """``rule`` if it is a valid ``predict`` argument (see :class:`Predictions`), else a ValueError."""
    if not (callable(rule) or rule in ("auto", "argmax", "logit", "probability")):
        raise ValueError(f"predict must be 'auto', 'argmax', 'logit', 'probability' or a callable, got {rule!r}")
    return rule


def predicted_classes(outputs: Tensor, rule: PredictRule) -> Tensor:
    """Classes ``(N,)`` from model outputs by ``rule`` (see :class:`Predictions`)."""
    if callable(rule):
        return rule(outputs).long().flatten()
    single = outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)
    if single:
        if rule in ("auto", "argmax"):
            raise ValueError(
                "the model has a single output column, so the class cannot be taken by argmax; pass "
                "predict='logit' (class 1 when the output > 0) or predict='probability' (when > 0.5)"
            )
        threshold = 0.0 if rule == "logit" else 0.5
        return (outputs.flatten() > threshold).long()
    if rule not in ("auto", "argmax"):
        raise ValueError(f"predict={rule!r} needs a single output column, got outputs of shape {tuple(outputs.shape)}")
    return outputs.flatten(1).argmax(dim=1)


def balanced_accuracy(pred: Tensor, labels: Tensor) -> float:
    """Mean per-class recall over the classes present in ``labels`` (scikit-learn's definition)."""
    support = torch.bincount(labels)
    hits = torch.bincount(labels[pred == labels], minlength=support.numel())
    present = support > 0
    return float((hits[present] / support[present]).mean()) if present.any() else float("nan")


def _is_binary(outputs: Tensor) -> bool:
    return outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] in (1, 2))


def _grid_over(points: Tensor, side: int) -> tuple[Tensor, list[float]]:
    """A ``side × side`` grid covering the points' bounding box (5 % margin), rows along y."""
    low = points.min(dim=0).values.float().cpu()
    high = points.max(dim=0).values.float().cpu()
    margin = 0.05 * (high - low)
    low, high = low - margin, high + margin
    xs = torch.linspace(low[0].item(), high[0].item(), side)
    ys = torch.linspace(low[1].item(), high[1].item(), side)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1).to(points.dtype)  # (side², 2)
    return grid, [low[0].item(), high[0].item(), low[1].item(), high[1].item()]


@register("feature_evolution")
class FeatureEvolution(Probe):
    """Zeiler & Fergus Fig. 4: at every snapshot, each chosen channel's strongest unit over the probe set, projected.

    For each channel of ``layer``: the probe image whose spatial maximum is largest, the input patch
    under that unit's receptive field and its DeconvNet projection (:mod:`deepscope.deconv`), so a
    strip of snapshots shows the feature forming during training. Enable it with
    ``Recorder(..., probes=[FeatureEvolution("layer3", channels=range(8))])``.

    Tags: ``evolution/<layer>/patches`` and ``evolution/<layer>/projections`` (``(C, C_in, h, w)``
    tiles, zeros outside the image), ``evolution/<layer>/scores`` and ``evolution/<layer>/images``
    (``(C,)``) per snapshot; meta ``evolution/layers`` and ``evolution/<layer>`` (channels, field).
    """

    schedule = "snapshot"
    tags = (
        TAGS.EVOLUTION_LAYERS, TAGS.EVOLUTION, f"{TAGS.EVOLUTION}/patches", f"{TAGS.EVOLUTION}/projections",
        f"{TAGS.EVOLUTION}/scores", f"{TAGS.EVOLUTION}/images",
    )  # fmt: skip

    def __init__(self, model: nn.Module, layer: str | nn.Module, channels: Sequence[int] = tuple(range(8))) -> None:
        from deepscope.layers import resolve_layer

        self.model = model
        self.layer, self.module = resolve_layer(model, layer)
        self.channels = [int(c) for c in channels]
        if not self.channels:
            raise ValueError("FeatureEvolution needs at least one channel")
        self.field: Any = None

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        run.set_meta(TAGS.EVOLUTION_LAYERS, [self.layer])

    def snapshot_layers(self) -> Mapping[str, nn.Module]:
        return {self.layer: self.module}

    def reduce_batch(self, layer: str, output: Tensor) -> Tensor:
        if output.ndim != 4:
            raise ValueError(
                f"FeatureEvolution needs a spatial layer (N, C, H, W); {layer!r} gives {tuple(output.shape)}"
            )
        if max(self.channels) >= output.shape[1]:
            raise ValueError(f"channels must be below {output.shape[1]} for {layer!r}, got {self.channels}")
        maps = output[:, self.channels].flatten(2).float()  # (N, C, H·W)
        value, where = maps.max(2)
        width = output.shape[-1]
        return torch.stack([value, (where // width).float(), (where % width).float()], 2)  # (N, C, 3)

    def snapshot(self, run: RunWriter, view: ProbePass) -> None:
        from deepscope.deconv import deconv_project
        from deepscope.receptive import receptive_field

        found = view.layer_outputs[self.layer]  # (N, C, 3) per image: value, row, column
        best = found[..., 0].argmax(0)  # (C,) the strongest probe image of each channel
        columns = torch.arange(len(self.channels))
        value, row, col = found[best, columns, 0], found[best, columns, 1].long(), found[best, columns, 2].long()
        images = view.inputs[best.cpu()].float()
        if self.field is None:
            self.field = receptive_field(self.model, self.layer, tuple(images.shape[1:]))
            field = {"size": list(self.field.size), "jump": list(self.field.jump), "start": list(self.field.start)}
            run.set_meta(TAGS.EVOLUTION.format(layer=self.layer), {"channels": self.channels, "field": field})
        units = torch.stack([torch.tensor(self.channels), row.cpu(), col.cpu()], 1)
        projections = deconv_project(self.model, images, self.layer, units).cpu()
        patches, tiles = (self.field.crop(t, row.cpu(), col.cpu())[0] for t in (images, projections))
        base = TAGS.EVOLUTION.format(layer=self.layer)
        run.add_tensor(f"{base}/patches", view.step, patches.numpy().astype(np.float16))
        run.add_tensor(f"{base}/projections", view.step, tiles.numpy())
        run.add_tensor(f"{base}/scores", view.step, value.cpu().numpy())
        run.add_tensor(f"{base}/images", view.step, best.cpu().numpy().astype(np.int64))
