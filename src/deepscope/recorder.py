"""Record a training run into a run store: scalars every step, probe-set snapshots every ``k`` steps.

The :class:`Recorder` wraps any training loop. Its hot path (:meth:`Recorder.step`) only
queues a few scalars; every ``every`` steps it runs the model on a fixed probe set (eval mode,
no grad, inside :func:`deepscope.guard.preserved`) and stores the chosen layers' outputs and the
predictions. Later issues add per-layer statistics as extra probes without changing this API.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from deepscope import _distributed as distributed
from deepscope._distributions import QUANTILES
from deepscope.guard import preserved
from deepscope.health import STATISTICS, LayerHealth, select_layers
from deepscope.hooks import HookSet
from deepscope.layers import model_device, resolve_layers
from deepscope.repro import library_versions
from deepscope.residual import ResidualFlow
from deepscope.store import STORE_FILENAME, RunReader, RunWriter, delete_run

__all__ = ["TAGS", "PredictRule", "Recorder"]

PredictRule = Literal["auto", "argmax", "logit", "probability"] | Callable[[Tensor], Tensor]


class TAGS:
    """Tag names the Recorder writes; the report reads the same constants."""

    LOSS = "train/loss"
    TRAIN_METRIC = "train/{name}"
    EVAL_METRIC = "eval/{name}"
    LR = "train/lr"  # one group; "train/lr/{i}" for several
    SAMPLES_PER_S = "train/samples_per_s"
    ACCURACY = "probe/accuracy"
    BALANCED_ACCURACY = "probe/balanced_accuracy"
    PROBE_INPUTS = "probe/inputs"
    PROBE_LABELS = "probe/labels"
    PROBE_OUTPUT = "probe/output"
    PROBE_PRED = "probe/pred"
    REPR = "repr/{layer}"
    GRID_SCORE = "input/grid_score"
    # run-level meta keys
    MAJORITY_BASELINE = "probe/majority_baseline"
    CLASS_NAMES = "probe/class_names"
    LAYERS = "repr/layers"
    PROJECTION = "repr/projection"
    POOLING = "repr/pooling"
    GRID_EXTENT = "input/grid_extent"
    EVERY = "recorder/every"
    SNAPSHOT_EVERY = "recorder/snapshot_every"
    HEALTH = "health/values"  # (statistics, layers) table per recorded step
    HEALTH_LAYERS = "health/layers"
    HEALTH_STATISTICS = "health/statistics"
    HEALTH_ACTIVATION_LAYERS = "health/activation_layers"  # the watched activation modules (dead units live there)
    RESIDUAL = "health/residual"  # (blocks,) ‖F(x)‖ / ‖skip(x)‖ per recorded step
    RESIDUAL_BLOCKS = "health/residual_blocks"
    HEALTH_NONFINITE = "health/first_nonfinite_step"
    DISTRIBUTIONS = "health/distributions"  # (layers, 2, summary): output and weight summaries per recorded step
    HISTOGRAM_BINS = "health/histogram_bins"
    QUANTILE_LEVELS = "health/quantile_levels"


_SCALAR_FLUSH_STEPS = 50  # step scalars wait on the device for at most this many steps
_PROBE_INPUTS_MAX_NUMEL = 200_000  # probe inputs are stored only when small (e.g. 2-D toy points)


class Recorder:
    """Record scalars, layer outputs and probe-set predictions of a training run.

    Use it as a context manager around any loop; call :meth:`step` once per optimisation step.
    Step 0 (the untrained model) is snapshotted on entry, then every ``snapshot_every`` steps
    (default: ``every``), and the final step on a clean exit.

    Args:
        model: the network being trained. It is never modified: snapshots run in eval mode
            under ``torch.no_grad()`` and every flag and hook is restored afterwards.
        run_dir: folder of the run store (created if missing; an existing store is appended to).
        probe: a fixed ``(inputs, labels)`` pair evaluated at each snapshot; labels are class
            indices ``(N,)``. Without it only scalars are recorded.
        layers: layers whose outputs are stored at each snapshot (dotted names or modules).
            Outputs are flattened to ``(N, D)``; when ``D > max_dims``, feature maps ``(N, C, H, W)``
            are first average-pooled to the finest spatial grid that fits, and what is still wider is
            reduced with a fixed Gaussian random projection (both recorded in the run's meta).
        every: period in steps of the layer-health measurements, and of the probe snapshots unless
            ``snapshot_every`` is given.
        snapshot_every: period of the probe snapshots when it should differ from ``every``: a probe
            snapshot costs a forward pass over the whole probe set, so e.g. ``every=1,
            snapshot_every=100`` watches every training step and animates the representation sparsely.
        predict: how to turn the model output into a class: ``"argmax"`` for ``(N, C)`` outputs,
            ``"logit"`` (``> 0``) or ``"probability"`` (``> 0.5``) for a single output column,
            or a callable. ``"auto"`` means argmax and raises for single-column outputs, which
            are ambiguous.
        class_names: display names of the classes, stored for the report.
        name: run name shown in reports (defaults to the folder name).
        config: hyper-parameters to store with the run (JSON-serialisable).
        batch_size: probe samples per forward pass.
        max_dims: largest layer width stored as is.
        decision_grid: for 2-D probe inputs and a binary task, the resolution of the grid on
            which the model's class-1 probability is also stored (0 disables it).
        overwrite: replace a run already recorded in ``run_dir``. Without it (or ``resume``) an
            existing run is an error: appending a second training from step 0 would mix two runs' curves.
        resume: continue the run already in ``run_dir`` (e.g. after the process was killed and the
            training restarted from a checkpoint): ``True`` goes on after its last recorded step, an
            int ``step`` goes on after that step and first deletes the rows recorded after it (the
            part of the run the checkpoint does not contain). Without a run in ``run_dir`` it starts
            one. A run being written by another live process is refused (:class:`~deepscope.errors.RunLockedError`).
        optimizer: when given, the learning rate of each of its parameter groups is recorded at
            every step (``train/lr``, or ``train/lr/<i>`` for several groups), schedulers included.
        health: per-layer statistics of the training step itself, every ``every`` steps (see
            :mod:`deepscope.health`): ``True`` for every leaf module with parameters and every
            activation module, layer names or modules, ``"re:<pattern>"`` on layer names, a module
            type or tuple of types (``nn.Conv2d``), or ``False``. Hooks are registered only for the
            measured steps.
        residual: with ``health``, the residual blocks whose ‖F(x)‖ / ‖skip(x)‖ is recorded:
            ``True`` finds torchvision ``BasicBlock``/``Bottleneck``-style blocks; or names of
            blocks, including modules whose output is ``x + F(x)`` (see :mod:`deepscope.residual`).
        histogram_bins: with ``health``, also record the distribution of each watched layer's output
            and of its weights at every measured step: range, a histogram of this many bins and
            the quantiles 1/25/50/75/99 %, computed on the device (``deepscope export-tensorboard``
            turns them into TensorBoard histograms). 0 (the default) records none.

    Example:
        >>> with Recorder(model, "runs/exp1", probe=(x_val, y_val), layers=["fc1"], every=10) as rec:  # doctest: +SKIP
        ...     for xb, yb in loader:
        ...         loss = loss_fn(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()
        ...         rec.step(loss=loss, metrics={"lr": opt.param_groups[0]["lr"]})
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | os.PathLike[str],
        *,
        probe: tuple[Tensor, Tensor] | None = None,
        layers: str | nn.Module | Sequence[str | nn.Module] = (),
        every: int = 10,
        snapshot_every: int | None = None,
        predict: PredictRule = "auto",
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        batch_size: int = 512,
        max_dims: int = 512,
        decision_grid: int = 60,
        overwrite: bool = False,
        health: bool | str | nn.Module | type[nn.Module] | Sequence[str | nn.Module] = True,
        optimizer: torch.optim.Optimizer | None = None,
        residual: bool | Sequence[str | nn.Module] = True,
        resume: bool | int = False,
        histogram_bins: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = distributed.unwrap(model)
        snapshot_every = every if snapshot_every is None else snapshot_every
        for label, period in (("every", every), ("snapshot_every", snapshot_every)):
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise ValueError(f"{label} must be a positive integer (a period in steps), got {period!r}")
        if batch_size < 1 or max_dims < 2:
            raise ValueError("batch_size must be >= 1 and max_dims >= 2")
        if not (callable(predict) or predict in ("auto", "argmax", "logit", "probability")):
            raise ValueError(f"predict must be 'auto', 'argmax', 'logit', 'probability' or a callable, got {predict!r}")
        self.model = model
        self.run_dir = Path(run_dir)
        self.every = every
        self.snapshot_every = snapshot_every
        self.predict = predict
        self.batch_size = batch_size
        self.max_dims = max_dims
        self.layers = resolve_layers(model, layers) if layers else {}
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name or self.run_dir.name
        self.config = dict(config or {})
        self.decision_grid = decision_grid
        if resume is not False and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
        if not isinstance(resume, bool) and (not isinstance(resume, int) or resume < 0):
            raise ValueError(f"resume must be True, False or the step (int >= 0) to restart from, got {resume!r}")
        self.overwrite = overwrite
        self.resume = resume
        self.probe = _check_probe(probe) if probe is not None else None
        self.global_step = 0
        self._writer: RunWriter | None = None  # rank 0 only
        self._opened = False
        self._last_snapshot: int | None = None
        self._projections: dict[str, Tensor] = {}
        self._pooled: set[str] = set()
        self._grid: Tensor | None = None
        self._last_time = 0.0
        self._pending: list[tuple[int, float, dict[str, float | Tensor]]] = []
        self._health = (
            LayerHealth(
                model, select_layers(model, health), ResidualFlow(model, residual), histogram_bins=histogram_bins
            )
            if health is not False
            else None
        )
        self.optimizer = optimizer
        self._nonfinite_seen = False

    # -- context management -------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)

    def open(self) -> None:
        """Create the store, write run-level metadata and snapshot the untrained model (step 0).

        With ``resume`` and an existing run, continue it instead: the step counter starts where the
        run stopped (or at the given step, discarding the rows recorded after it) and no new step-0
        snapshot is taken.
        """
        if self._opened:
            return
        failure: BaseException | None = None
        if distributed.rank() == 0:  # under torch.distributed only rank 0 writes; the others learn how that went
            try:
                self._open_store()
            except BaseException as err:
                failure = err
        failed, self.global_step = distributed.from_rank0([failure is not None, self.global_step])
        if failure is not None:
            raise failure
        if failed:
            raise RuntimeError(f"rank 0 could not open the run store in {self.run_dir}; see its error")
        self._last_snapshot = self.global_step
        self._opened = True
        self._last_time = time.perf_counter()
        self._arm_if_due()

    def _open_store(self) -> None:
        exists = (self.run_dir / STORE_FILENAME).exists()
        if self.overwrite:
            delete_run(self.run_dir)
        elif exists and self.resume is False:
            raise FileExistsError(
                f"{self.run_dir} already holds a recorded run; pass resume=True to continue it, overwrite=True to "
                "replace it, or choose another run_dir"
            )
        self._writer = RunWriter(self.run_dir, name=self.name, config=self.config, versions=library_versions())
        resumed = exists and not self.overwrite and self._resume_counters(self._writer)
        self._writer.set_meta(TAGS.EVERY, self.every)
        self._writer.set_meta(TAGS.SNAPSHOT_EVERY, self.snapshot_every)
        self._writer.set_meta(TAGS.LAYERS, list(self.layers))
        if self.class_names is not None:
            self._writer.set_meta(TAGS.CLASS_NAMES, self.class_names)
        if self.probe is not None and not resumed:
            self._write_probe_constants(self._writer, *self.probe)
        elif self.probe is not None:
            self._set_probe_grid(self._writer, self.probe[0])
        if self._health is not None:
            self._writer.set_meta(TAGS.HEALTH_LAYERS, self._health.layers)
            self._writer.set_meta(TAGS.HEALTH_STATISTICS, list(STATISTICS))
            self._writer.set_meta(TAGS.HEALTH_ACTIVATION_LAYERS, self._health.activation_layers)
            if self._health.residual is not None and self._health.residual.blocks:
                self._writer.set_meta(TAGS.RESIDUAL_BLOCKS, self._health.residual.blocks)
            if self._health.histogram_bins:
                self._writer.set_meta(TAGS.HISTOGRAM_BINS, self._health.histogram_bins)
                self._writer.set_meta(TAGS.QUANTILE_LEVELS, list(QUANTILES))
        if not resumed:
            self._snapshot(self._writer)

    def _resume_counters(self, writer: RunWriter) -> bool:
        """Continue the run in the store: set the step counter, drop rows after a ``resume=<step>``; False if empty."""
        with RunReader(self.run_dir) as reader:
            last = reader.last_step()
            self._nonfinite_seen = TAGS.HEALTH_NONFINITE in reader.meta()
        if last is None:
            return False
        start = last if self.resume is True else int(self.resume)
        if start < last:
            writer.discard_after(start)  # the steps after the checkpoint were lost with the process
        self.global_step = self._last_snapshot = start
        return True

    def close(self, *, failed: bool = False) -> None:
        """Snapshot the final step (on success), flush every pending row and close the store."""
        if not self._opened:
            return
        writer, self._writer, self._opened = self._writer, None, False
        status = "failed" if failed else "finished"
        if self._health is not None:
            self._health.disarm()
        try:
            if not failed:  # after a failure the other ranks may not be here: no collective
                self._flush_scalars(writer)
            if writer is not None and not failed and self._last_snapshot != self.global_step:
                self._snapshot(writer)
        except BaseException:
            status = "failed"
            raise
        finally:
            if writer is not None:
                if failed:
                    self._flush_scalars(writer, reduce=False)  # no collective: the other ranks may be gone
                writer.set_status(status)
                writer.close()

    # -- hot path -------------------------------------------------------------------------------
    def step(
        self,
        loss: float | Tensor | None = None,
        metrics: Mapping[str, float | Tensor] | None = None,
        *,
        batch_size: int | None = None,
    ) -> None:
        """Count one optimisation step, record its loss and metrics, and snapshot every ``every`` steps.

        Tensor values stay on their device until the next flush (every ``every`` steps, at most
        :data:`_SCALAR_FLUSH_STEPS`), so a CUDA loss is not synchronised at every step. With
        ``batch_size`` the throughput ``train/samples_per_s`` is recorded too.
        """
        self._require_open()
        values: dict[str, float | Tensor] = {}
        if loss is not None:
            values[TAGS.LOSS] = _scalar(loss)
        for key, value in (metrics or {}).items():
            values[TAGS.TRAIN_METRIC.format(name=key)] = _scalar(value)
        if self.optimizer is not None:
            groups = self.optimizer.param_groups
            for i, group in enumerate(groups):
                values[TAGS.LR if len(groups) == 1 else f"{TAGS.LR}/{i}"] = _scalar(group["lr"])
        now = time.perf_counter()
        values["train/step_time_s"] = now - self._last_time
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int (samples in this step), got {batch_size!r}")
            values[TAGS.SAMPLES_PER_S] = batch_size / max(now - self._last_time, 1e-9)
        self._last_time = now
        self.global_step += 1
        self._pending.append((self.global_step, time.time(), values))
        health_due = self.global_step % self.every == 0
        snapshot_due = self.global_step % self.snapshot_every == 0
        if health_due and self._health is not None and self._health.armed:
            self._write_health()
        if health_due or snapshot_due or len(self._pending) >= _SCALAR_FLUSH_STEPS:
            self._flush_scalars(self._writer)
        if snapshot_due:
            self.snapshot()
        self._arm_if_due()

    def _arm_if_due(self) -> None:
        """Arm the layer-health hooks when the next training step is a recorded one."""
        if self._health is not None and (self.global_step + 1) % self.every == 0:
            self._health.arm()

    def _write_health(self) -> None:
        assert self._health is not None
        table = self._health.read(self.global_step)  # a mean over the ranks under torch.distributed
        writer = self._writer
        if writer is None:
            return
        writer.add_tensor(TAGS.HEALTH, table.step, table.values.numpy())
        if table.residual is not None and table.residual.numel():
            writer.add_tensor(TAGS.RESIDUAL, table.step, table.residual.numpy())
        if table.distributions is not None:
            writer.add_tensor(TAGS.DISTRIBUTIONS, table.step, table.distributions.numpy())
        if table.nonfinite and not self._nonfinite_seen:
            self._nonfinite_seen = True  # a diverging run: flag where it broke, keep recording
            writer.set_meta(TAGS.HEALTH_NONFINITE, table.step)

    def _flush_scalars(self, writer: RunWriter | None, *, reduce: bool = True) -> None:
        """Move pending step scalars to the host in one transfer and hand them to the writer (rank 0).

        Under torch.distributed the values are averaged over the ranks first (throughput summed),
        unless ``reduce`` is off: then rank 0 writes its own.
        """
        pending, self._pending = self._pending, []
        rows = [(step, wall, _to_host(values)) for step, wall, values in pending]
        if reduce and distributed.active():
            rows = _mean_over_ranks(rows)
        if writer is not None:
            for step, wall_time, values in rows:
                writer.add_scalars(step, values, wall_time=wall_time)

    def eval_step(self, metrics: Mapping[str, float | Tensor]) -> None:
        """Record validation metrics (``eval/<name>``) at the current training step.

        Call it after an evaluation pass, e.g. ``rec.eval_step({"loss": val_loss, "accuracy": acc})``:
        training and validation curves then share one step axis in the report.
        """
        self._require_open()
        if not metrics:
            raise ValueError("eval_step needs at least one metric, e.g. {'loss': val_loss}")
        self._flush_scalars(self._writer)  # keep the rows in step order
        values = {TAGS.EVAL_METRIC.format(name=k): _scalar(v) for k, v in metrics.items()}
        rows = [(self.global_step, time.time(), _to_host(values))]
        if distributed.active():
            rows = _mean_over_ranks(rows)
        if self._writer is not None:
            self._writer.add_scalars(self.global_step, rows[0][2], wall_time=rows[0][1])

    def log_scalar(self, tag: str, value: float | Tensor, step: int | None = None) -> None:
        """Record a user scalar at ``step`` (the current step by default); under torch.distributed, rank 0's."""
        value = _scalar(value)
        self._require_open()
        if self._writer is not None:
            self._writer.add_scalar(tag, self.global_step if step is None else step, float(value))

    def log_tensor(self, tag: str, value: Tensor | np.ndarray, step: int | None = None) -> None:
        """Record a user array at ``step`` (the current step by default); under torch.distributed, rank 0's."""
        self._require_open()
        if self._writer is not None:
            array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            self._writer.add_tensor(tag, self.global_step if step is None else step, array)

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Evaluate the probe set now and store layer outputs, predictions and accuracies (rank 0 only)."""
        self._require_open()
        if self._writer is not None:
            self._snapshot(self._writer)
        self._last_snapshot = self.global_step

    def _snapshot(self, writer: RunWriter) -> None:
        self._last_snapshot = self.global_step
        if self.probe is None:
            return
        inputs, labels = self.probe
        outputs, layer_outputs = self._forward_probe(inputs)
        pred = self._predict(outputs)
        step = self.global_step
        correct = pred == labels.to(pred.device)
        writer.add_scalars(
            step,
            {
                TAGS.ACCURACY: correct.float().mean().item(),
                TAGS.BALANCED_ACCURACY: _balanced_accuracy(pred.cpu(), labels),
            },
        )
        writer.add_tensor(TAGS.PROBE_OUTPUT, step, outputs.float().cpu().numpy())
        writer.add_tensor(TAGS.PROBE_PRED, step, pred.cpu().numpy().astype(np.int64))
        for layer, value in layer_outputs.items():
            writer.add_tensor(TAGS.REPR.format(layer=layer), step, value.cpu().numpy())
        if self._grid is not None and not callable(self.predict) and _is_binary(outputs):
            scores = self._positive_score(self._forward_probe(self._grid, capture=False)[0])
            side = self.decision_grid
            writer.add_tensor(TAGS.GRID_SCORE, step, scores.reshape(side, side).float().cpu().numpy())

    def _forward_probe(self, inputs: Tensor, *, capture: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the model on ``inputs`` in batches; return outputs and (if ``capture``) the flattened layer outputs."""
        device = model_device(self.model)
        outputs: list[Tensor] = []
        layers = self.layers if capture else {}
        captured: dict[str, list[Tensor]] = {name: [] for name in layers}
        with preserved(self.model, grads=False), torch.no_grad(), HookSet() as hooks:
            self.model.eval()
            latest = hooks.capture_outputs(layers, transform=Tensor.detach)
            for start in range(0, inputs.shape[0], self.batch_size):
                batch = inputs[start : start + self.batch_size].to(device)
                out = self.model(batch)
                logits = getattr(out, "logits", None)  # Hugging Face models return a ModelOutput
                if not isinstance(out, Tensor) and isinstance(logits, Tensor):
                    out = logits
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"the Recorder needs a model that returns a Tensor (or an output with .logits), got "
                        f"{type(out).__name__}; wrap the model so that forward returns the logits"
                    )
                outputs.append(out.detach())
                for name in layers:
                    if name not in latest:
                        raise RuntimeError(f"layer {name!r} was not called during the forward pass of the probe set")
                    captured[name].append(self._features(name, latest.pop(name)))
        layer_outputs = {name: self._project(name, torch.cat(chunks)) for name, chunks in captured.items()}
        return torch.cat(outputs), layer_outputs

    def _features(self, layer: str, output: Tensor) -> Tensor:
        """A layer output as ``(N, D)`` floats, feature maps wider than ``max_dims`` average-pooled first.

        ``(N, C, H, W)`` maps are pooled to the finest ``s × s`` grid with ``C·s² <= max_dims``: cheap,
        and unlike a random projection of the flattened map it keeps the coarse spatial layout.
        """
        if output.ndim == 4 and output[0].numel() > self.max_dims:
            grid = max(1, min(math.isqrt(self.max_dims // output.shape[1]), *output.shape[2:]))
            if layer not in self._pooled:
                self._pooled.add(layer)
                assert self._writer is not None  # snapshots run on rank 0, which writes
                size = output.shape[1] * grid * grid
                self._writer.set_meta(
                    f"{TAGS.POOLING}/{layer}",
                    {"kind": "adaptive_avg_pool", "grid": [grid, grid], "from": list(output.shape[1:]), "to": size},
                )
            output = nn.functional.adaptive_avg_pool2d(output, grid)
        return output.flatten(1).float()

    def _project(self, layer: str, values: Tensor) -> Tensor:
        """Reduce ``(N, D)`` values to at most ``max_dims`` columns with a fixed random projection."""
        width = values.shape[1]
        if width <= self.max_dims:
            return values
        if layer not in self._projections:
            generator = torch.Generator().manual_seed(0)
            matrix = torch.randn(width, self.max_dims, generator=generator) / self.max_dims**0.5
            self._projections[layer] = matrix.to(values.device)
            assert self._writer is not None  # snapshots run on rank 0, which writes
            self._writer.set_meta(
                f"{TAGS.PROJECTION}/{layer}",
                {"kind": "gaussian_random", "seed": 0, "from": width, "to": self.max_dims},
            )
        return values @ self._projections[layer]  # (N, D) @ (D, max_dims)

    def _predict(self, outputs: Tensor) -> Tensor:
        rule = self.predict
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
        if rule != "auto" and rule != "argmax":
            raise ValueError(
                f"predict={rule!r} needs a single output column, got outputs of shape {tuple(outputs.shape)}"
            )
        return outputs.flatten(1).argmax(dim=1)

    def _positive_score(self, outputs: Tensor) -> Tensor:
        """Probability of class 1 for a binary task, used for the input-space decision map."""
        if outputs.ndim == 2 and outputs.shape[1] == 2:
            return outputs.softmax(dim=1)[:, 1]
        flat = outputs.flatten()
        return torch.sigmoid(flat) if self.predict == "logit" else flat

    def _write_probe_constants(self, writer: RunWriter, inputs: Tensor, labels: Tensor) -> None:
        counts = np.bincount(labels.numpy())
        writer.set_meta(TAGS.MAJORITY_BASELINE, float(counts.max() / counts.sum()))
        writer.add_tensor(TAGS.PROBE_LABELS, 0, labels.numpy().astype(np.int64))
        if inputs.numel() <= _PROBE_INPUTS_MAX_NUMEL:
            writer.add_tensor(TAGS.PROBE_INPUTS, 0, inputs.float().cpu().numpy())
        self._set_probe_grid(writer, inputs)

    def _set_probe_grid(self, writer: RunWriter, inputs: Tensor) -> None:
        """For 2-D probe points, the grid on which the decision map is evaluated at each snapshot."""
        if self.decision_grid > 0 and inputs.ndim == 2 and inputs.shape[1] == 2:
            self._grid, extent = _grid_over(inputs, self.decision_grid)
            writer.set_meta(TAGS.GRID_EXTENT, extent)

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("the Recorder is not open: use it as `with Recorder(...) as rec:` or call rec.open()")


def _to_host(values: Mapping[str, float | Tensor]) -> dict[str, float]:
    """Step values as floats; the tensor ones come to the host in one transfer."""
    tensors = [k for k, v in values.items() if isinstance(v, Tensor)]
    floats = {k: v for k, v in values.items() if not isinstance(v, Tensor)}
    if tensors:
        moved = torch.stack([values[k].float() for k in tensors]).cpu().tolist()  # type: ignore[union-attr]
        floats.update(zip(tensors, moved, strict=True))
    return {k: float(floats[k]) for k in values}


def _mean_over_ranks(rows: list[tuple[int, float, dict[str, float]]]) -> list[tuple[int, float, dict[str, float]]]:
    """Average every value over the ranks (one collective); throughput is summed, as the ranks train together."""
    flat = [v for _, _, values in rows for v in values.values()]
    steps = [step for step, _, _ in rows] or [0]
    distributed.agree([len(rows), len(flat), steps[0], steps[-1]], "the recorded steps and values")
    mean = iter(distributed.mean_across_ranks(torch.tensor(flat, dtype=torch.float64)).tolist())
    world = distributed.world_size()
    return [
        (step, wall, {k: next(mean) * (world if k == TAGS.SAMPLES_PER_S else 1) for k in values})
        for step, wall, values in rows
    ]


def _check_probe(probe: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Validate a probe pair and return (inputs, labels as int64 on the CPU)."""
    if not (isinstance(probe, (tuple, list)) and len(probe) == 2):
        raise TypeError("probe must be a pair (inputs, labels) of tensors")
    inputs, labels = probe
    if not isinstance(inputs, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"probe must hold tensors, got ({type(inputs).__name__}, {type(labels).__name__})")
    labels = labels.detach().flatten().cpu()
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"probe inputs have {inputs.shape[0]} samples but labels have {labels.shape[0]}")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("probe labels must be class indices (integers), got non-integral floats")
        labels = labels.long()
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"probe labels must be class indices >= 0, got {labels.min().item()}")
    return inputs.detach(), labels.long()


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


def _balanced_accuracy(pred: Tensor, labels: Tensor) -> float:
    """Mean per-class recall over the classes present in ``labels`` (scikit-learn's definition)."""
    support = torch.bincount(labels)
    hits = torch.bincount(labels[pred == labels], minlength=support.numel())
    present = support > 0
    return float((hits[present] / support[present]).mean()) if present.any() else float("nan")


def _is_binary(outputs: Tensor) -> bool:
    return outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] in (1, 2))


def _scalar(value: float | Tensor) -> float | Tensor:
    """Validate a step value: a number, or a one-element tensor kept (detached) on its device."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(())
    if not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number or a one-element tensor, got {type(value).__name__}")
    return float(value)
