"""Value distributions of activations and weights, summarised on the device without synchronising.

One summary is a flat vector ``[low, high, counts × bins, quantiles × len(QUANTILES)]``: the
finite range, a histogram of ``bins`` equal-width buckets over it, and a few quantiles.
Everything is computed with fixed-shape tensor operations (``scatter_add_``, ``nanquantile``), so
on a GPU nothing waits for the host: the Recorder moves the summaries to the host with the rest of
the step's statistics in one transfer. Non-finite values are left out of every part; an input
without a finite value gives NaN range and quantiles and zero counts. Reading one back:
:func:`deepscope._distribution_summary.split_summary` (numpy only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepscope._distribution_summary import QUANTILES

__all__ = ["QUANTILES", "summarise", "summary_size"]


def summary_size(bins: int) -> int:
    """Length of one summary vector."""
    return 2 + bins + len(QUANTILES)


def summarise(values: Tensor, bins: int) -> Tensor:
    """``(summary_size(bins),)`` float32 summary of the (already sampled) values, on their device."""
    flat = values.detach().reshape(-1).float()
    finite = torch.isfinite(flat)
    inf = torch.full((), float("inf"), device=flat.device)
    low = torch.where(finite, flat, inf).amin() if flat.numel() else inf
    high = torch.where(finite, flat, -inf).amax() if flat.numel() else -inf
    width = (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    bucket = ((flat - low) / width * bins).floor().clamp(0, bins - 1)
    bucket = torch.where(finite, bucket, torch.full_like(bucket, bins)).long()  # non-finite: an extra, dropped bucket
    counts = torch.zeros(bins + 1, device=flat.device).scatter_add_(0, bucket, torch.ones_like(flat))[:bins]
    levels = torch.tensor(QUANTILES, device=flat.device)
    quantiles = torch.nanquantile(torch.where(finite, flat, torch.nan), levels) if flat.numel() else levels * torch.nan
    empty = ~finite.any() if flat.numel() else torch.ones((), dtype=torch.bool, device=flat.device)
    ends = torch.where(empty, torch.full((2,), float("nan"), device=flat.device), torch.stack([low, high]))
    return torch.cat([ends, counts, quantiles])
