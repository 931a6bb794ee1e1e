"""Record a Hugging Face ``Trainer`` run with deepscope: one callback, the Recorder does the rest.

Example:
    >>> from deepscope.integrations.huggingface import DeepscopeCallback  # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
    ...                   callbacks=[DeepscopeCallback("runs/bert", every=10)])
    >>> trainer.train()  # then: deepscope report runs/bert

The step axis is the Trainer's ``state.global_step`` (optimiser steps). The Recorder steps right
after each optimiser step, before the Trainer zeroes the gradients, so gradient norms and update
ratios are measured. The training loss is the ``loss`` of the model's output for the last batch of
each step (models given ``labels`` return one); evaluation metrics (``eval_loss``…) are recorded as
``eval/<name>``. A ``probe`` may hold token ids: the Recorder reads the ``.logits`` of the output.
``Trainer`` needs ``accelerate`` (``pip install "deepscope[hf]"``).

Hugging Face callbacks are not told when ``train()`` raises: use the callback as a context manager
(``with DeepscopeCallback(...) as cb: ... trainer.train()``) so that the run is closed as failed and
every hook removed even then.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from deepscope.hooks import HookSet
from deepscope.integrations._common import eval_metrics
from deepscope.recorder import Recorder

__all__ = ["DeepscopeCallback"]

_NOT_METRICS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_epoch")


class DeepscopeCallback(TrainerCallback):
    """Open a :class:`~deepscope.Recorder` on the Trainer's model for the length of ``train()``.

    Args:
        run_dir: the run folder.
        **recorder_kwargs: passed to :class:`~deepscope.Recorder` (``probe``, ``layers``, ``every``,
            ``health``, ``histogram_bins``, ``resume``…); the Trainer's optimizer is used for the
            learning rates unless one is given.
    """

    def __init__(self, run_dir: str | os.PathLike[str], **recorder_kwargs: Any) -> None:
        self.run_dir = run_dir
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._hooks: HookSet | None = None
        self._loss: Tensor | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Open the Recorder on the model and watch the loss of its outputs."""
        if model is None:
            raise ValueError("the Trainer passed no model to the callback; deepscope needs it to record")
        options = dict(self.recorder_kwargs)
        options.setdefault("optimizer", optimizer)
        if options.get("resume") is True:  # train(resume_from_checkpoint=...): continue at the checkpoint's step
            options["resume"] = state.global_step
        self.recorder = Recorder(model, self.run_dir, **options)
        self.recorder.open()
        self._hooks = HookSet()
        self._hooks.forward(model, self._keep_loss)

    def _keep_loss(self, _module: nn.Module, _args: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if isinstance(loss, Tensor) and loss.numel() == 1 and _module.training:
            self._loss = loss.detach()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Record the step that the Trainer is about to count (its gradients are still there)."""
        if self.recorder is not None:
            self.recorder.step(loss=self._loss)
            self._loss = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record ``eval_*`` metrics at the current step."""
        found = eval_metrics(metrics or {}, prefix="eval", skip=_NOT_METRICS)
        if self.recorder is not None and found:
            self.recorder.eval_step(found)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Snapshot the final step, remove the loss hook and close the run."""
        self.close()

    def close(self, *, failed: bool = False) -> None:
        """Remove the loss hook and close the run (idempotent); ``train()`` ending calls it."""
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close(failed=failed)

    def __enter__(self) -> DeepscopeCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(failed=exc_type is not None)
