"""Where a dataset-wide analysis runs: in this process (``"local"``), or on Ray (``"ray"`` or :class:`Ray`).

An analysis is cut into shards (:mod:`deepscope.scale._shards`); a *work* function turns one
shard into a partial result (sums, counts, maxima, top-k heaps, rows keyed by position); partial
results merge associatively, so the result does not depend on where the shards ran. On Ray, the
shards go through Ray Data's ``map_batches`` to a pool of actors that each build the model once
from ``model_factory`` and the weights this process sends (never a pickled model), and a shard
that raises is run again (``retries``) and then reported with its items in the result's
:class:`Coverage`, never dropped unseen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from deepscope._data import dataset_size
from deepscope._progress import track
from deepscope.errors import ShardsFailedError
from deepscope.scale._shards import Shard, plan, sized, view

__all__ = ["Coverage", "Ray", "ShardFailure", "resolve", "run_shards", "run_whole"]

Work = Callable[[nn.Module, Any, Shard], Any]
"""``work(model, items, shard) -> partial``: a module-level function (or a ``functools.partial`` of one), so it
can be sent to Ray workers; ``items`` is the shard's view of the data."""


@dataclass(frozen=True, slots=True)
class Ray:
    """Run on Ray: an existing cluster (``address="auto"`` or ``"ray://host:10001"``) or a new local instance.

    Attributes:
        address: passed to ``ray.init``; None uses ``RAY_ADDRESS`` when set, else starts Ray on this
            machine (``local_cpus`` CPUs, no dashboard, loopback only, usage statistics off). A Ray
            session already open in this process is used as it is.
        workers: actors holding a copy of the model (default: as many as ``cpus_per_worker`` and
            ``gpus_per_worker`` allow on the cluster).
        cpus_per_worker, gpus_per_worker: each actor's resources (``gpus_per_worker=1``: one GPU each,
            the model moved to it).
        shards_per_worker: how many shards each worker gets on average (more: finer retries and
            progress, more overhead).
        retries: further attempts of a shard that raised, before it is reported as failed.
        local_cpus: CPUs of a local instance started here (None: all of them).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    shards_per_worker: int = 4
    retries: int = 1
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(
                f"need cpus_per_worker > 0 and gpus_per_worker >= 0, got {self.cpus_per_worker}, {self.gpus_per_worker}"
            )
        if self.shards_per_worker < 1 or self.retries < 0:
            raise ValueError(
                f"need shards_per_worker >= 1 and retries >= 0, got {self.shards_per_worker}, {self.retries}"
            )


@dataclass(frozen=True, slots=True)
class ShardFailure:
    """A shard that raised on every attempt: its items, the last error and the number of attempts."""

    shard: int
    start: int
    stop: int
    error: str
    attempts: int

    @property
    def ids(self) -> range:
        """The dataset positions of the shard's items."""
        return range(self.start, self.stop)


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which items of the data a result covers: all of them, unless shards failed (listed in ``failed``)."""

    items: int
    backend: str = "local"
    shards: int = 1
    failed: tuple[ShardFailure, ...] = ()
    retried: tuple[int, ...] = ()  # shards that raised and then succeeded on a further attempt

    @property
    def complete(self) -> bool:
        """Whether every item was covered."""
        return not self.failed

    def missing(self) -> np.ndarray:
        """The positions of the items no shard covered, ascending."""
        if not self.failed:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(f.start, f.stop) for f in sorted(self.failed, key=lambda f: f.start)])

    def covered(self) -> np.ndarray:
        """``(items,)`` bool: whether each position was covered."""
        mask = np.ones(self.items, bool)
        mask[self.missing()] = False
        return mask

    def summary(self) -> str:
        """One line: how many items and shards, and which failed."""
        where = f"{self.items} items in {self.shards} shard{'s' * (self.shards != 1)} on {self.backend}"
        again = f" ({len(self.retried)} after a retry)" if self.retried else ""
        if not self.failed:
            return f"{where}: all covered{again}"
        failures = "; ".join(
            f"shard {f.shard} (items {f.start}–{f.stop - 1}) after {f.attempts} attempts: {f.error}"
            for f in self.failed
        )
        return f"{where}: {len(self.missing())} items not covered — {failures}"


def resolve(backend: str | Ray) -> Ray | None:
    """None for ``"local"``; a :class:`Ray` for ``"ray"`` (its defaults) or a :class:`Ray` itself."""
    if isinstance(backend, Ray):
        return backend
    if backend == "local":
        return None
    if backend == "ray":
        return Ray()
    raise ValueError(f"unknown backend {backend!r}; valid: 'local', 'ray', or deepscope.scale.Ray(address=...)")


def run_shards(
    work: Work,
    model: nn.Module,
    data: Any,
    shards: Sequence[Shard],
    *,
    backend: Ray | None,
    model_factory: Callable[[], nn.Module] | None,
    label: str,
    keep: Callable[[Shard, Any], Any] | None = None,
) -> tuple[list[tuple[Shard, Any]], Coverage]:
    """Run ``work`` on every shard; the partial results in shard order, and what they cover.

    Locally the shards run one after the other on ``model`` itself, and an error propagates at
    once (it is the same on every shard). On Ray, see :class:`Ray`. ``keep(shard, partial)``, when
    given, runs here as each result arrives and its value is kept instead (e.g. a file written and
    its name), so large results never pile up in memory.
    """
    size = shards[-1].stop if shards else 0
    kept = keep if keep is not None else (lambda _shard, partial: partial)
    if backend is None:
        done = [
            (shard, kept(shard, work(model, view(data, shard), shard)))
            for shard in track(shards, label, total=len(shards))
        ]
        return done, Coverage(size, "local", len(shards))
    _check_factory(model_factory)
    from deepscope.scale._ray import run_on_ray  # Ray is an optional extra, loaded only here

    partials, failures, retried = run_on_ray(work, model, data, shards, backend, model_factory, label, kept)
    by_index = {shard.index: shard for shard in shards}
    done = [(by_index[i], partials[i]) for i in sorted(partials)]
    coverage = Coverage(
        size, "ray", len(shards), tuple(sorted(failures, key=lambda f: f.shard)), tuple(sorted(retried))
    )
    if not done:
        raise ShardsFailedError(f"every shard failed on Ray: {coverage.summary()}")
    return done, coverage


def run_whole(
    work: Work,
    model: nn.Module,
    data: Any,
    *,
    backend: str | Ray,
    model_factory: Callable[[], nn.Module] | None,
    minimum: int,
    label: str,
) -> tuple[list[Any], Coverage]:
    """The partial results of an analysis with no randomness, in data order, and what they cover.

    Locally: one stream over ``data``. On Ray: ``shards_per_worker`` shards per worker, each of at
    least ``minimum`` items (a batch, so no forward pass is smaller than it would be locally).
    """
    config = resolve(backend)
    if config is None:
        size = dataset_size(data) or 0
        return [work(model, data, Shard(0, 0, size))], Coverage(size)
    _check_factory(model_factory)
    from deepscope.scale._ray import worker_count

    size = sized(data)
    shards = plan(size, max(minimum, -(-size // (worker_count(config) * config.shards_per_worker))))
    done, coverage = run_shards(work, model, data, shards, backend=config, model_factory=model_factory, label=label)
    return [result for _, result in done], coverage


def _check_factory(model_factory: Callable[[], nn.Module] | None) -> None:
    if model_factory is None:
        raise ValueError(
            "backend='ray' builds the model on each worker: pass model_factory=, a function (importable by the "
            "workers) that returns the architecture; deepscope sends it the model's weights, never a pickled model"
        )
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(
            f"model_factory must be a function returning the model, got {type(model_factory).__name__}: pass the "
            "class or a function that builds it (e.g. functools.partial(make_net, width=64)), not the model"
        )
