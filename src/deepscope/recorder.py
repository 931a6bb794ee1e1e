"""Record a training run into a run store: the Recorder drives the probes of :mod:`deepscope.probes`.

The :class:`Recorder` wraps any training loop. Its hot path (:meth:`Recorder.step`) only
queues a few scalars; one step in ``every`` is measured by the layer-health probes (hooks exist
only during that step), and every ``snapshot_every`` steps the model runs on a fixed probe set
(eval mode, no grad, inside :func:`deepscope.guard.preserved`) for the snapshot probes. What is
recorded is the set of probes the arguments switch on (``rec.probes``), plus your own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepscope import _distributed as distributed
from deepscope._tags import TAGS
from deepscope.guard import preserved
from deepscope.health import Distributions, LayerHealth, select_layers
from deepscope.hooks import HookSet
from deepscope.layers import model_device, resolve_layers
from deepscope.probes import (
    DecisionMap,
    LearningRate,
    Predictions,
    PredictRule,
    Probe,
    ProbePass,
    Representations,
    Scalars,
    StepInfo,
    Throughput,
    check_predict,
    scalar,
)
from deepscope.repro import library_versions
from deepscope.residual import ResidualFlow
from deepscope.store import STORE_FILENAME, RunReader, RunWriter, delete_run

__all__ = ["TAGS", "PredictRule", "Recorder"]

_SCALAR_FLUSH_STEPS = 50  # step scalars wait on the device for at most this many steps


class Recorder:
    """Record scalars, layer health, layer outputs and probe-set predictions of a training run.

    Use it as a context manager around any loop; call :meth:`step` once per optimisation step.
    Step 0 (the untrained model) is snapshotted on entry, then every ``snapshot_every`` steps
    (default: ``every``), and the final step on a clean exit. ``rec.probes`` lists what is
    recorded (see :mod:`deepscope.probes`).

    Args:
        model: the network being trained. It is never modified: snapshots run in eval mode
            under ``torch.no_grad()`` and every flag and hook is restored afterwards.
        run_dir: folder of the run store (created if missing).
        probe: a fixed ``(inputs, labels)`` pair evaluated at each snapshot; labels are class
            indices ``(N,)``. Without it there are no snapshots.
        layers: with ``probe``, layers whose outputs are stored at each snapshot (dotted names or
            modules). Outputs are flattened to ``(N, D)``; when ``D > max_dims``, feature maps
            ``(N, C, H, W)`` are first average-pooled to the finest spatial grid that fits, and what is
            still wider is reduced with a fixed Gaussian random projection (both recorded in the meta).
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
        probes: your own :class:`~deepscope.probes.Probe` instances, recorded with the built-in ones.
        footprint: measure the energy, CO₂-eq and water of the recorded training, from ``open`` to ``close``
            (:class:`deepscope.footprint.Meter`: codecarbon's offline tracker when installed, else an estimate);
            ``True`` for the defaults, or a dict of ``Meter``'s arguments such as ``{"country": "FRA"}``. Stored
            in the run (``repro/footprint``) for the report's *Reproducibility & footprint* section.

    Example:
        >>> with Recorder(model, "runs/exp1", probe=(x_val, y_val), layers=["fc1"], every=10) as rec:  # doctest: +SKIP
        ...     for xb, yb in loader:
        ...         loss = loss_fn(model(xb), yb); opt.zero_grad(); loss.backward(); opt.step()
        ...         rec.step(loss=loss, metrics={"accuracy": acc})
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
        probes: Sequence[Probe] = (),
        footprint: bool | Mapping[str, Any] = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = distributed.unwrap(model)
        snapshot_every = every if snapshot_every is None else snapshot_every
        for label, period in (("every", every), ("snapshot_every", snapshot_every), ("batch_size", batch_size)):
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise ValueError(f"{label} must be a positive integer, got {period!r}")
        if resume is not False and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
        if not isinstance(resume, bool) and (not isinstance(resume, int) or resume < 0):
            raise ValueError(f"resume must be True, False or the step (int >= 0) to restart from, got {resume!r}")
        self.model = model
        self.run_dir = Path(run_dir)
        self.every = every
        self.snapshot_every = snapshot_every
        self.batch_size = batch_size
        self.class_names = list(class_names) if class_names is not None else None
        self.name = name or self.run_dir.name
        self.config = dict(config or {})
        self.overwrite = overwrite
        self.resume = resume
        self.probe = _check_probe(probe) if probe is not None else None
        check_predict(predict)
        self.probes: tuple[Probe, ...] = (
            *_training_probes(model, optimizer, health, residual, histogram_bins),
            *_snapshot_probes(model, self.probe, layers, predict, max_dims, decision_grid),
            *_user_probes(probes, self.probe is not None),
        )
        self._by_schedule = {kind: [p for p in self.probes if p.schedule == kind] for kind in ("step", "measured")}
        self.global_step = 0
        self._writer: RunWriter | None = None  # rank 0 only
        self._opened = False
        self._last_snapshot: int | None = None
        self._last_time = 0.0
        self._pending: list[tuple[int, float, dict[str, float | Tensor]]] = []
        self._hooks: HookSet | None = None  # the measured step's hooks, while armed
        self._nonfinite_seen = False
        self._meter = _meter(footprint, model)  # checked now: a bad setting fails before training starts

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
        self._writer.set_meta(TAGS.PROBES, [p.name or type(p).__name__ for p in self.probes])
        if self.class_names is not None:
            self._writer.set_meta(TAGS.CLASS_NAMES, self.class_names)
        for probe in self.probes:
            probe.start(self._writer, resumed=resumed)
        if not resumed:
            self._snapshot(self._writer)
        if self._meter is not None:
            self._meter.__enter__()

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
        self._disarm()
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
                if self._meter is not None:
                    self._meter.__exit__(None, None, None)
                    writer.set_meta(TAGS.FOOTPRINT, self._meter.footprint.as_dict())
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
        """Count one optimisation step, record its loss and metrics, measure or snapshot when due.

        Tensor values stay on their device until the next flush (every ``every`` steps, at most
        :data:`_SCALAR_FLUSH_STEPS`), so a CUDA loss is not synchronised at every step. With
        ``batch_size`` the throughput ``train/samples_per_s`` is recorded too.
        """
        self._require_open()
        now = time.perf_counter()
        info = StepInfo(self.global_step + 1, loss, metrics or {}, batch_size, now - self._last_time)
        values: dict[str, float | Tensor] = {}
        for probe in self._by_schedule["step"]:
            values.update(probe.step_values(info))
        self._last_time = now
        self.global_step += 1
        self._pending.append((self.global_step, time.time(), values))
        measure_due = self.global_step % self.every == 0
        snapshot_due = self.global_step % self.snapshot_every == 0
        if measure_due and self._hooks is not None:
            self._write_measured()
        if measure_due or snapshot_due or len(self._pending) >= _SCALAR_FLUSH_STEPS:
            self._flush_scalars(self._writer)
        if snapshot_due:
            self.snapshot()
        self._arm_if_due()

    def _arm_if_due(self) -> None:
        """Arm the measured-step probes when the next training step is a measured one."""
        probes = self._by_schedule["measured"]
        if probes and self._hooks is None and (self.global_step + 1) % self.every == 0:
            self._hooks = HookSet()
            try:
                for probe in probes:
                    probe.arm(self._hooks)
            except BaseException:
                self._disarm()
                raise

    def _disarm(self) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()

    def _write_measured(self) -> None:
        """Read the measured-step probes, move their tensors to the host in one transfer and store them."""
        self._disarm()
        measured = [(probe, probe.measure()) for probe in self._by_schedule["measured"]]
        measured.sort(key=lambda item: not item[0].averaged)  # the values averaged over ranks come first
        parts = [tensor for _, tensors in measured for tensor in tensors.values()]
        device = model_device(self.model)
        packed = torch.cat([t.detach().float().reshape(-1).to(device) for t in parts]).cpu() if parts else None
        if packed is not None and distributed.active():
            averaged = sum(t.numel() for probe, tensors in measured if probe.averaged for t in tensors.values())
            packed[:averaged] = distributed.mean_across_ranks(packed[:averaged])
        offset, diverged = 0, False
        for probe, tensors in measured:
            arrays = {}
            for tag, tensor in tensors.items():
                assert packed is not None
                arrays[tag] = packed[offset : offset + tensor.numel()].view(tensor.shape).numpy()
                offset += tensor.numel()
            diverged = diverged or (bool(arrays) and probe.nonfinite(arrays))
            if self._writer is not None:
                for tag, array in arrays.items():
                    self._writer.add_tensor(tag, self.global_step, array)
        if diverged and not self._nonfinite_seen:
            self._nonfinite_seen = True  # a diverging run: flag where it broke, keep recording
            if self._writer is not None:
                self._writer.set_meta(TAGS.HEALTH_NONFINITE, self.global_step)

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
        values = {TAGS.EVAL_METRIC.format(name=k): scalar(v) for k, v in metrics.items()}
        rows = [(self.global_step, time.time(), _to_host(values))]
        if distributed.active():
            rows = _mean_over_ranks(rows)
        if self._writer is not None:
            self._writer.add_scalars(self.global_step, rows[0][2], wall_time=rows[0][1])

    def log_scalar(self, tag: str, value: float | Tensor, step: int | None = None) -> None:
        """Record a user scalar at ``step`` (the current step by default); under torch.distributed, rank 0's."""
        value = scalar(value)
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
        """Evaluate the probe set now and let the snapshot probes store what they see (rank 0 only)."""
        self._require_open()
        if self._writer is not None:
            self._snapshot(self._writer)
        self._last_snapshot = self.global_step

    def _snapshot(self, writer: RunWriter) -> None:
        self._last_snapshot = self.global_step
        if self.probe is None:
            return
        inputs, labels = self.probe
        probes = [p for p in self.probes if p.schedule == "snapshot"]
        outputs, layer_outputs = self._forward_probe(inputs, probes)
        for probe in probes:
            view = ProbePass(self.global_step, inputs, labels, outputs, layer_outputs[probe], self._forward)
            probe.snapshot(writer, view)

    def _forward(self, inputs: Tensor) -> Tensor:
        return self._forward_probe(inputs, [])[0]

    def _forward_probe(self, inputs: Tensor, probes: Sequence[Probe]) -> tuple[Tensor, dict[Probe, dict[str, Tensor]]]:
        """Run the model on ``inputs`` in batches: the outputs, and each probe's reduced layer outputs."""
        device = model_device(self.model)
        outputs: list[Tensor] = []
        chunks: dict[Probe, dict[str, list[Tensor]]] = {p: {name: [] for name in p.snapshot_layers()} for p in probes}
        with preserved(self.model, grads=False), torch.no_grad(), HookSet() as hooks:
            self.model.eval()
            latest = {p: hooks.capture_outputs(p.snapshot_layers(), transform=Tensor.detach) for p in probes}
            for start in range(0, inputs.shape[0], self.batch_size):
                out = self.model(inputs[start : start + self.batch_size].to(device))
                logits = getattr(out, "logits", None)  # Hugging Face models return a ModelOutput
                if not isinstance(out, Tensor) and isinstance(logits, Tensor):
                    out = logits
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"the Recorder needs a model that returns a Tensor (or an output with .logits), got "
                        f"{type(out).__name__}; wrap the model so that forward returns the logits"
                    )
                outputs.append(out.detach())
                for probe, captured in latest.items():
                    for name, value in captured.items():
                        chunks[probe][name].append(probe.reduce_batch(name, value))
                    captured.clear()
        layer_outputs = {p: {name: torch.cat(parts) for name, parts in c.items() if parts} for p, c in chunks.items()}
        return torch.cat(outputs), layer_outputs

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("the Recorder is not open: use it as `with Recorder(...) as rec:` or call rec.open()")


def _training_probes(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    health: Any,
    residual: bool | Sequence[str | nn.Module],
    histogram_bins: int,
) -> list[Probe]:
    """The step and measured-step probes the Recorder's arguments switch on."""
    probes: list[Probe] = [Scalars(), Throughput()]
    if optimizer is not None:
        probes.append(LearningRate(optimizer))
    if isinstance(histogram_bins, bool) or not isinstance(histogram_bins, int) or histogram_bins < 0:
        raise ValueError(f"histogram_bins must be an int >= 0 (0 turns histograms off), got {histogram_bins!r}")
    if health is False:
        if histogram_bins or residual not in (True, False):
            raise ValueError("histogram_bins and a list of residual blocks are measured with the layer health: "
                             "leave health on (health=True or a selection of layers)")  # fmt: skip
        return probes
    layers = select_layers(model, health)
    probes.append(LayerHealth(model, layers))
    if histogram_bins:
        probes.append(Distributions(model, layers, histogram_bins))
    flow = ResidualFlow(model, residual)
    if flow.blocks:
        probes.append(flow)
    return probes


def _snapshot_probes(
    model: nn.Module,
    probe: tuple[Tensor, Tensor] | None,
    layers: str | nn.Module | Sequence[str | nn.Module],
    predict: PredictRule,
    max_dims: int,
    decision_grid: int,
) -> list[Probe]:
    """The snapshot probes: predictions on the probe set, layer representations, the 2-D decision map."""
    watched = resolve_layers(model, layers) if isinstance(layers, (str, nn.Module)) or len(layers) else {}
    if probe is None:
        if watched:
            raise ValueError("layers= are recorded on the probe set: pass probe=(inputs, labels) too")
        return []
    inputs, labels = probe
    probes: list[Probe] = [Predictions(inputs, labels, predict)]
    if watched:
        probes.append(Representations(watched, max_dims))
    if decision_grid > 0 and inputs.ndim == 2 and inputs.shape[1] == 2:
        probes.append(DecisionMap(inputs, decision_grid, predict))
    return probes


def _user_probes(probes: Sequence[Probe], has_probe_set: bool) -> list[Probe]:
    """Validate the user's own probes."""
    checked = list(probes)
    for probe in checked:
        if not isinstance(probe, Probe):
            raise TypeError(f"probes must be deepscope.probes.Probe instances, got {type(probe).__name__}")
        if getattr(probe, "schedule", None) not in ("step", "measured", "snapshot"):
            raise ValueError(f"{type(probe).__name__}.schedule must be 'step', 'measured' or 'snapshot'")
        if probe.schedule == "snapshot" and not has_probe_set:
            raise ValueError(f"{type(probe).__name__} is a snapshot probe: pass probe=(inputs, labels) too")
    return checked


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


def _meter(footprint: bool | Mapping[str, Any], model: nn.Module) -> Any:
    """The footprint meter the Recorder runs from ``open`` to ``close``, or None."""
    if footprint is False:
        return None
    from deepscope.footprint import Meter  # codecarbon is imported only when asked for

    if not isinstance(footprint, (bool, Mapping)):
        raise TypeError(f"footprint must be True, False or a dict of Meter arguments, got {type(footprint).__name__}")
    settings = {} if footprint is True else dict(footprint)
    device = model_device(model)
    return Meter(**{"device": device if device.type == "cuda" else None, **settings})
