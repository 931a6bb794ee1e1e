"""The Ray backend: shards through Ray Data's ``map_batches`` to a pool of actors that each hold the model.

Each actor builds the model once (``model_factory()``, then the weights sent from the driver with
``load_state_dict``), on a GPU when it was given one, and runs one shard per call. A shard that
raises is run again up to ``retries`` times in the actor; one that still raises comes back as a
failure record (the error and the attempts), so the driver reports it instead of losing the
items. Results come back as they finish (a progress bar counts them) and are put in shard order.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deepscope._progress import track
from deepscope.errors import ShardsFailedError
from deepscope.scale._shards import Shard, view
from deepscope.scale.backends import Ray, ShardFailure, Work

__all__ = ["OFFLINE", "connect", "run_on_ray", "worker_count"]


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray Data: pip install 'deepscope[ray]'") from error
    return ray


OFFLINE = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report
    # a single-node instance: every process takes the loopback address instead of finding this machine's
    # address by routing towards a public DNS server (8.8.8.8); read when ray is imported and by its processes
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
"""What a private local instance needs in the environment to stay off the network (set unless already set)."""


def connect(config: Ray) -> Any:
    """The ``ray`` module, connected: the session already open, else ``ray.init`` as :class:`Ray` describes."""
    address = config.address or os.environ.get("RAY_ADDRESS")
    if not address and "ray" not in sys.modules:  # a private instance: offline before ray reads the settings
        for name, value in OFFLINE.items():
            os.environ.setdefault(name, value)
    ray = _ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # a private instance on this machine: loopback only, no dashboard
        ray.init(num_cpus=config.local_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return ray


def worker_count(config: Ray) -> int:
    """The actors to start: ``config.workers``, else as many as the cluster's CPUs (and GPUs) allow."""
    if config.workers is not None:
        return config.workers
    resources = connect(config).cluster_resources()
    count = int(resources.get("CPU", 1) // config.cpus_per_worker)
    if config.gpus_per_worker:
        count = min(count, int(resources.get("GPU", 0) // config.gpus_per_worker))
        if count < 1:
            raise ValueError(f"gpus_per_worker={config.gpus_per_worker} but the Ray cluster has no free GPU")
    return max(count, 1)


class _ShardWorker:
    """A Ray actor: the model built once, then one shard per call (``{"shard", "start", "stop"}`` rows)."""

    def __init__(
        self, factory: Callable[[], nn.Module], state: Any, data: Any, work: Any, retries: int, threads: int,
        gpu: bool,
    ) -> None:  # fmt: skip
        ray = _ray()
        resolve = lambda ref: ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref  # noqa: E731
        torch.set_num_threads(threads)  # no more threads than the actor's CPUs: actors share the node
        device = torch.device("cuda") if gpu and torch.cuda.is_available() else torch.device("cpu")
        self.model = factory()
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model_factory must return a torch.nn.Module, got {type(self.model).__name__}")
        self.model.load_state_dict(resolve(state))
        self.model.to(device).eval()
        self.data, self.work, self.retries = resolve(data), resolve(work), retries

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = Shard(int(batch["shard"][0]), int(batch["start"][0]), int(batch["stop"][0]))
        error = ""
        for attempt in range(1, self.retries + 2):
            try:
                partial = self.work(self.model, view(self.data, shard), shard)
            except Exception:
                error = traceback.format_exc(limit=-3).strip().splitlines()[-1]
                continue
            return _row(shard, pickle.dumps(partial), "", attempt)
        return _row(shard, b"", error, self.retries + 1)


def _rows(ray: Any, results: Any) -> Iterator[dict[str, Any]]:
    """The result rows as they arrive; an error of Ray itself (an actor that could not start) in one clear line."""
    try:
        yield from results.iter_rows()
    except ray.exceptions.RayError as error:
        cause = [line for line in str(error).strip().splitlines() if line.strip()]
        raise ShardsFailedError(
            f"the Ray workers could not run: {cause[-1] if cause else type(error).__name__}"
        ) from error


def _row(shard: Shard, partial: bytes, error: str, attempts: int) -> dict[str, np.ndarray]:
    return {
        "shard": np.array([shard.index]), "start": np.array([shard.start]), "stop": np.array([shard.stop]),
        "partial": np.array([partial], dtype=object), "error": np.array([error], dtype=object),
        "attempts": np.array([attempts]),
    }  # fmt: skip


def run_on_ray(
    work: Work,
    model: nn.Module,
    data: Any,
    shards: Sequence[Shard],
    config: Ray,
    model_factory: Callable[[], nn.Module],
    label: str,
    keep: Callable[[Shard, Any], Any],
) -> tuple[dict[int, Any], list[ShardFailure], list[int]]:
    """Each shard's ``keep(shard, partial)`` by shard index, the shards that failed every attempt, those retried.

    ``keep`` runs here as each result arrives, so a shard's maps can be written and dropped at once.
    """
    ray = connect(config)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    workers = min(worker_count(config), len(shards))
    rows = [{"shard": s.index, "start": s.start, "stop": s.stop} for s in shards]
    with warnings.catch_warnings():  # Ray Data's first context warns about its own deprecated settings
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
        context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False  # deepscope's own bar counts the shards
    try:
        results = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _ShardWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={
                "factory": model_factory,
                "state": ray.put(state),
                "data": ray.put(data),
                "work": ray.put(work),
                "retries": config.retries,
                "threads": max(1, int(config.cpus_per_worker)),
                "gpu": config.gpus_per_worker > 0,
            },
            num_cpus=config.cpus_per_worker,
            num_gpus=config.gpus_per_worker or None,
        )
        partials: dict[int, Any] = {}
        failures: list[ShardFailure] = []
        retried: list[int] = []
        for row in track(_rows(ray, results), label, total=len(shards)):
            index, start, stop = int(row["shard"]), int(row["start"]), int(row["stop"])
            if row["error"]:
                failures.append(ShardFailure(index, start, stop, str(row["error"]), int(row["attempts"])))
            else:
                shard = Shard(index, start, stop)
                partials[index] = keep(shard, pickle.loads(row["partial"]))  # pickled by deepscope's worker, above
                if int(row["attempts"]) > 1:
                    retried.append(index)
    finally:
        context.enable_progress_bars = bars
    return partials, failures, retried
