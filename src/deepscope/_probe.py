"""The probe interface of the Recorder: :class:`Probe`, the registry ``PROBES`` and what probes are given.

The schedules and the built-in probes are described in :mod:`deepscope.probes`, which is the public
face of this module; the probes defined next to what they measure (:mod:`deepscope.health`,
:mod:`deepscope.residual`) import the interface from here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from torch import Tensor, nn

from deepscope._store_writer import RunWriter
from deepscope.hooks import HookSet
from deepscope.registry import Registry

__all__ = ["PROBES", "Probe", "ProbePass", "Schedule", "StepInfo", "register", "scalar"]

Schedule = Literal["step", "measured", "snapshot"]


@dataclass(frozen=True)
class StepInfo:
    """What the training loop reported for one step (the argument of :meth:`Probe.step_values`)."""

    step: int
    loss: float | Tensor | None
    metrics: Mapping[str, float | Tensor]
    batch_size: int | None
    seconds: float  # wall-clock time since the previous step


@dataclass(frozen=True)
class ProbePass:
    """The probe set's forward pass at a snapshot (the argument of :meth:`Probe.snapshot`)."""

    step: int
    inputs: Tensor  # (N, ...) as given to the Recorder
    labels: Tensor  # (N,) int64 on the CPU
    outputs: Tensor  # (N, ...) model outputs, detached, on the model's device
    layer_outputs: Mapping[str, Tensor]  # this probe's snapshot_layers, batches reduced and concatenated
    forward: Callable[[Tensor], Tensor]  # the same eval-mode, no-grad forward in batches, for other inputs


class Probe:
    """One kind of measurement of the Recorder; subclasses override the methods of their ``schedule``."""

    name: ClassVar[str] = ""  # the registry key, set by @register
    schedule: ClassVar[Schedule]
    tags: ClassVar[tuple[str, ...]] = ()  # the tags and meta keys it writes
    averaged: ClassVar[bool] = True  # "measured": average over the ranks under torch.distributed

    def start(self, run: RunWriter, *, resumed: bool) -> None:
        """Write the run-level meta (rank 0 only); ``resumed`` when continuing a recorded run."""

    def step_values(self, info: StepInfo) -> Mapping[str, float | Tensor]:
        """``"step"`` probes: the scalars of this step, by tag."""
        return {}

    def arm(self, hooks: HookSet) -> None:
        """``"measured"`` probes: get ready for the next training step (hooks go into ``hooks``)."""

    def measure(self) -> Mapping[str, Tensor]:
        """``"measured"`` probes: after the measured step's optimiser step, its tensors by tag (on the device)."""
        return {}

    def nonfinite(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Whether the measured values (on the host) show a diverging run; any NaN or inf by default."""
        return any(not np.isfinite(array).all() for array in arrays.values())

    def snapshot_layers(self) -> Mapping[str, nn.Module]:
        """``"snapshot"`` probes: the layers whose outputs this probe needs from the probe-set pass."""
        return {}

    def reduce_batch(self, layer: str, output: Tensor) -> Tensor:
        """Reduce one batch's output of a snapshot layer before the batches are concatenated."""
        return output.flatten(1)

    def snapshot(self, run: RunWriter, view: ProbePass) -> None:
        """``"snapshot"`` probes: store what the probe-set pass shows (rank 0 only)."""


PROBES: Registry[type[Probe]] = Registry("probe")


def register(name: str) -> Callable[[type[Probe]], type[Probe]]:
    """Class decorator: enter a probe in :data:`PROBES` under ``name`` (also its ``name`` attribute)."""

    def add(cls: type[Probe]) -> type[Probe]:
        cls.name = name
        return PROBES.register(name)(cls)

    return add


def scalar(value: float | Tensor) -> float | Tensor:
    """Validate a step value: a number, or a one-element tensor kept (detached) on its device."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(())
    if not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number or a one-element tensor, got {type(value).__name__}")
    return float(value)
