"""Record a Lightning training with deepscope: one callback, the Recorder does the rest.

Example:
    >>> from deepscope.integrations.lightning import DeepscopeCallback  # doctest: +SKIP
    >>> trainer = lightning.Trainer(callbacks=[DeepscopeCallback("runs/exp1", probe=(x_val, y_val), every=10)])
    >>> trainer.fit(module, train_loader, val_loader)  # then: deepscope report runs/exp1

The step axis is Lightning's ``trainer.global_step``, the number of optimiser steps: with
``accumulate_grad_batches=k`` the run has one step per ``k`` batches and records the loss of the
batch that completed it. Validation metrics logged under a name starting with ``val`` (``val_loss``,
``val/acc``) are recorded as ``eval/<name>`` after each validation run. Under distributed training the
callback runs on every rank, as the Recorder expects, and rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from deepscope.integrations._common import batch_size_of, eval_metrics
from deepscope.recorder import Recorder

__all__ = ["DeepscopeCallback"]


class DeepscopeCallback(pl.Callback):
    """Open a :class:`~deepscope.Recorder` on the LightningModule for the length of ``fit``.

    Args:
        run_dir: the run folder.
        **recorder_kwargs: passed to :class:`~deepscope.Recorder` (``probe``, ``layers``, ``every``,
            ``health``, ``histogram_bins``, ``resume``…). The optimizer is the trainer's when it has
            exactly one and none is given, so learning rates are recorded. ``resume=True`` continues
            the run at the step of the checkpoint ``fit`` restarts from.
    """

    def __init__(self, run_dir: str | os.PathLike[str], **recorder_kwargs: Any) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the Recorder once the module is on its device."""
        kwargs = dict(self.recorder_kwargs)
        if "optimizer" not in kwargs and len(trainer.optimizers) == 1:
            kwargs["optimizer"] = trainer.optimizers[0]
        if kwargs.get("resume") is True:  # fit(ckpt_path=...): continue the run at the checkpoint's step
            kwargs["resume"] = trainer.global_step
        self.recorder = Recorder(pl_module, self.run_dir, **kwargs)
        self.recorder.open()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record one step per optimiser step (not per batch when gradients are accumulated)."""
        rec = self.recorder
        if rec is None or trainer.global_step <= rec.global_step:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        rec.step(loss=loss if isinstance(loss, Tensor) else None, batch_size=batch_size_of(batch))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch's validation metrics (``val*`` names) at the current step."""
        if self.recorder is None or trainer.sanity_checking:
            return
        metrics = eval_metrics(trainer.callback_metrics, prefix="val")
        if metrics:
            self.recorder.eval_step(metrics)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Snapshot the final step and close the run."""
        self._close(failed=False)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Mark the run failed (its hooks are removed; what was recorded stays readable)."""
        self._close(failed=True)

    def _close(self, *, failed: bool) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close(failed=failed)
