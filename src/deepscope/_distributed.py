"""What the Recorder needs from ``torch.distributed``: its rank, and means across ranks.

Outside a process group (the usual single-process training) every function is a no-op, so the
Recorder's code reads the same either way. Inside one, each function is a collective: every rank
must call it, in the same order, with tensors of the same shape.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["active", "agree", "from_rank0", "mean_across_ranks", "rank", "unwrap", "world_size"]


def active() -> bool:
    """Whether this process belongs to an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` wrapper holds (hooks go on its layers), else the model."""
    parallel = torch.nn.parallel.DistributedDataParallel
    return model.module if isinstance(model, parallel) else model


def _device_for(tensor: Tensor) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo handles CPU tensors everywhere."""
    if dist.get_backend() == "nccl":
        return tensor.device if tensor.is_cuda else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_across_ranks(tensor: Tensor) -> Tensor:
    """The element-wise mean of ``tensor`` over all ranks, on ``tensor``'s device (itself outside a group)."""
    if not active():
        return tensor
    work = tensor.detach().to(_device_for(tensor), dtype=torch.float64, copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return (work / dist.get_world_size()).to(tensor.device, tensor.dtype)


def agree(values: list[int], what: str) -> list[int]:
    """Check that every rank passes the same integers and return them (each rank's own outside a group).

    Raises:
        RuntimeError: the ranks disagree: they are not recording in step, which would otherwise hang.
    """
    if not active():
        return values
    local = torch.tensor(values, dtype=torch.float64)
    work = torch.cat([local, -local]).to(_device_for(local))
    dist.all_reduce(work, op=dist.ReduceOp.MAX)  # max and −min in one collective
    high, low = work[: len(values)].cpu(), -work[len(values) :].cpu()
    if not torch.equal(high, low):
        raise RuntimeError(
            f"the ranks disagree on {what} (from {low.tolist()} to {high.tolist()}): under torch.distributed every "
            "rank must call the Recorder the same way (same steps, same metric names)"
        )
    return values


def from_rank0(values: list[int]) -> list[int]:
    """Rank 0's integers, on every rank (the values as given outside a group)."""
    if not active():
        return values
    local = torch.tensor(values, dtype=torch.float64)
    work = local.to(_device_for(local))
    dist.broadcast(work, src=0)
    return [int(v) for v in work.cpu().tolist()]
