"""Reproducibility: fix every seed, record what a run ran on, check that a training repeats bit for bit.

- :func:`seed_everything` seeds Python, NumPy and torch (CPU and every CUDA device), and by default
  asks torch for deterministic algorithms (cuDNN deterministic, no benchmark autotuning, the cuBLAS
  workspace setting CUDA needs). It returns what it set, and every run created afterwards records it.
- :func:`environment` is what every new run stores automatically (``repro/environment``): Python,
  library versions, CUDA/cuDNN, devices, CPU, OS, the git commit and dirty flag of the user's
  project, and the environment variables that change results.
- :func:`seed_worker` and :func:`loader_generator` make ``DataLoader`` shuffling and worker randomness
  follow the seed.
- :func:`split_manifest` lists each split's items (file paths, or content hashes) with a digest;
  ``manifest.record(run_dir)`` stores it, ``SplitManifest.load(run_dir)`` reads it back, ``verify``
  compares new data with it and :func:`verify_files` re-reads the files where they are now.
- :func:`rerun_check` trains twice with the same seed and compares losses and weights bit for bit;
  when they differ it names the non-deterministic operation if torch can.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepscope._environment import environment as _environment
from deepscope._environment import library_versions, note_seed
from deepscope._manifest import ManifestCheck, SplitManifest, split_manifest, verify_files

__all__ = [
    "ManifestCheck",
    "RerunCheck",
    "SplitManifest",
    "environment",
    "library_versions",
    "loader_generator",
    "rerun_check",
    "seed_everything",
    "seed_worker",
    "split_manifest",
    "verify_files",
]

_CUBLAS = ":4096:8"  # the workspace configuration CUDA's cuBLAS needs for deterministic results


def environment() -> dict[str, Any]:
    """What this process runs on (JSON-safe): what every new run records under ``repro/environment``."""
    return _environment()


def seed_everything(seed: int, *, deterministic: bool = True) -> dict[str, Any]:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA); with ``deterministic``, ask for deterministic kernels.

    Returns what was set. ``PYTHONHASHSEED`` cannot change once Python has started: its value is reported
    (set it in the shell for reproducible ``set`` and ``dict`` orders of strings across processes).
    With ``deterministic``, an operation that has no deterministic implementation raises when it runs
    (``torch.use_deterministic_algorithms``), so a silent difference becomes a clear error.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device
    settings: dict[str, Any] = {"seed": seed, "deterministic": deterministic}
    if deterministic:
        if torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        settings["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    settings["python_hash_seed"] = os.environ.get("PYTHONHASHSEED")
    note_seed(settings)
    return dict(settings)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: each worker's ``random`` and NumPy follow torch's seed for it."""
    del worker_id  # torch already derives a distinct initial seed per worker
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def loader_generator(seed: int) -> torch.Generator:
    """``DataLoader(generator=loader_generator(seed))``: the shuffling order follows ``seed``."""
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class RerunCheck:
    """Two trainings with the same seed, compared bit for bit.

    Attributes:
        identical: the losses and every parameter and buffer are bit-identical.
        losses: the loss series of each run.
        first_difference: the first step whose losses differ (None when they agree).
        weight_differences: ``name -> max |a − b|`` of the parameters and buffers that differ.
        culprit: the non-deterministic operation torch names when the training runs with deterministic
            algorithms enforced (None when it names none or the runs agree).
    """

    identical: bool
    losses: tuple[tuple[float, ...], tuple[float, ...]]
    first_difference: int | None = None
    weight_differences: dict[str, float] = field(default_factory=dict)
    culprit: str | None = None

    def summary(self) -> str:
        """One line: identical, or where it first differs and why if known."""
        if self.identical:
            return f"identical: {len(self.losses[0])} losses and every weight match bit for bit"
        parts = []
        if self.first_difference is not None:
            parts.append(f"losses differ from step {self.first_difference}")
        if self.weight_differences:
            worst = max(self.weight_differences, key=self.weight_differences.__getitem__)
            parts.append(
                f"{len(self.weight_differences)} tensors differ (most: {worst}, {self.weight_differences[worst]:.3g})"
            )
        if self.culprit:
            parts.append(f"non-deterministic operation: {self.culprit}")
        return "not reproducible: " + "; ".join(parts)


TrainFn = Callable[[], "tuple[nn.Module, Sequence[float]] | nn.Module"]


def rerun_check(train_fn: TrainFn, seed: int, *, deterministic: bool = True) -> RerunCheck:
    """Run ``train_fn`` twice after ``seed_everything(seed)`` and compare losses and weights bit for bit.

    ``train_fn()`` builds and trains a model (briefly) and returns ``(model, losses)`` or the model.
    When the runs differ and ``deterministic`` was off, a third run with deterministic algorithms
    enforced names the operation that has no deterministic implementation, if there is one. The
    global determinism settings (torch's and cuDNN's) are restored afterwards.
    """
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    try:
        first, second = (_train(train_fn, seed, deterministic) for _ in range(2))
        losses = (first[1], second[1])
        step = next((i for i, (a, b) in enumerate(zip(*losses, strict=False)) if a != b), None)
        if step is None and len(losses[0]) != len(losses[1]):
            step = min(len(losses[0]), len(losses[1]))
        differences = _weight_differences(first[0], second[0])
        identical = step is None and not differences
        culprit = None if identical else _culprit(train_fn, seed)
    finally:
        torch.use_deterministic_algorithms(before[0])
        cudnn.deterministic, cudnn.benchmark = before[1:]
    return RerunCheck(identical, losses, step, differences, culprit)


def _train(train_fn: TrainFn, seed: int, deterministic: bool) -> tuple[dict[str, torch.Tensor], tuple[float, ...]]:
    seed_everything(seed, deterministic=deterministic)
    out = train_fn()
    model, losses = out if isinstance(out, tuple) else (out, ())
    if not isinstance(model, nn.Module):
        raise TypeError(f"train_fn must return a model or (model, losses), got {type(out).__name__}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, tuple(float(v) for v in losses)


def _weight_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    differences = {}
    for name in a.keys() | b.keys():
        x, y = a.get(name), b.get(name)
        if x is None or y is None or x.shape != y.shape:
            differences[name] = float("inf")
        elif not torch.equal(x, y):
            differences[name] = float((x.double() - y.double()).abs().max()) if x.is_floating_point() else float("inf")
    return dict(sorted(differences.items()))


def _culprit(train_fn: TrainFn, seed: int) -> str | None:
    """The operation torch refuses when deterministic algorithms are enforced, if any."""
    try:
        _train(train_fn, seed, deterministic=True)
    except RuntimeError as err:
        found = re.search(r"^(.*?) does not have a deterministic implementation", str(err), re.MULTILINE)
        return found.group(1).strip() if found else None
    return None
