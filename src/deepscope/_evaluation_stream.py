""":func:`deepscope.evaluate`'s one inference pass, as a mergeable partial result per shard of the data.

Per example it keeps the class probabilities, label and loss, and for an evenly spaced subsample
(fixed by dataset position) the features of the mapped layer; per confusion cell, the running
top-k by loss (:class:`~deepscope._evaluation_cells.CellSelector`). Partial results of consecutive
shards merge by concatenation in data order, so a stream cut into shards (on Ray) gives the same
arrays as one stream here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope._data import dataset_size, labelled_batches
from deepscope._evaluation_cells import CellSelector
from deepscope._progress import track
from deepscope.guard import preserved
from deepscope.hooks import HookSet, first_tensor
from deepscope.layers import LayerSpec, is_layer, model_device, resolve_layer
from deepscope.scale._shards import Shard

__all__ = ["Stream", "feature_layer", "merge_streams", "stream_work", "subsample"]


@dataclass(frozen=True, slots=True)
class Stream:
    """The pass over one shard (or the whole data): rows in data order, and the shard's cell top-k."""

    probabilities: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64
    losses: np.ndarray  # (N,)
    features: np.ndarray | None  # (M, D) of the subsample
    feature_index: np.ndarray  # (M,) their positions
    feature_layer: str
    cells: CellSelector


@dataclass(frozen=True, slots=True)
class FeatureLayer:
    """The layer the 2-D map shows: its label, its dotted name, and whether its input (not output) is taken."""

    label: str
    name: str | None
    use_input: bool


def feature_layer(model: nn.Module, layer: LayerSpec | None) -> FeatureLayer:
    """``layer``'s output, else the input of the last ``nn.Linear`` (no layer without one)."""
    if layer is not None:
        name, _ = resolve_layer(model, layer)
        return FeatureLayer(name, name, False)
    linear = [name for name, m in model.named_modules() if is_layer(m, nn.Linear)]
    if not linear:
        return FeatureLayer("", None, False)
    return FeatureLayer(f"{linear[-1]} (input)", linear[-1], True)


def subsample(size: int | None, max_points: int) -> np.ndarray | None:
    """Evenly spaced positions of the examples mapped in 2-D (None: every example, size unknown or small)."""
    if size is None or size <= max_points:
        return None
    return np.unique(np.linspace(0, size - 1, max_points).round().astype(np.int64))


def stream_work(
    model: nn.Module, items: Any, shard: Shard, *, batch_size: int, feature: FeatureLayer, keep: np.ndarray | None,
    per_cell: int,
) -> Stream:  # fmt: skip
    """One inference pass over ``items``, whose first example is at dataset position ``shard.start``."""
    device = model_device(model)
    captured: list[Tensor] = []
    selector = CellSelector(per_cell)
    probabilities, labels, losses, features, positions = [], [], [], [], []
    seen = shard.start
    with preserved(model, grads=False), torch.inference_mode(), HookSet() as hooks:
        model.eval()
        if feature.name is not None:
            module = dict(model.named_modules())[feature.name]
            if feature.use_input:
                hooks.forward_pre(module, lambda _m, args: captured.append(first_tensor(args)))
            else:
                hooks.forward(module, lambda _m, _a, out: captured.append(first_tensor(out)))
        total = dataset_size(items)
        batches = None if total is None else -(-total // batch_size)
        for inputs, target in track(labelled_batches(items, batch_size), "evaluate", total=batches):
            captured.clear()
            probs = _probabilities(model(inputs.to(device)))  # (B, K)
            target = target.to(probs.device).long().flatten()
            if target.shape[0] != probs.shape[0]:
                raise ValueError(f"a batch has {probs.shape[0]} outputs but {target.shape[0]} labels")
            picked = target.clamp(0, probs.shape[1] - 1)  # out-of-range labels are reported after the pass
            losses.append(-probs.gather(1, picked[:, None]).clamp_min(1e-12).log().squeeze(1).double().cpu())
            probabilities.append(probs.cpu())
            labels.append(target.cpu())
            rows_probs = probabilities[-1].numpy()
            selector.update(seen, labels[-1].numpy(), rows_probs.argmax(1), losses[-1].numpy(), rows_probs.shape[1])
            if captured and captured[0] is not None:
                rows = _rows_kept(keep, seen, probs.shape[0])
                features.append(_pooled(captured[0][rows]).float().cpu())
                positions.append(torch.as_tensor(rows) + seen)
            seen += probs.shape[0]
    if not probabilities:
        empty = np.zeros(0, np.int64)
        return Stream(np.zeros((0, 2), np.float32), empty, np.zeros(0), None, empty, feature.label, selector)
    return Stream(
        torch.cat(probabilities).numpy(), torch.cat(labels).numpy(), torch.cat(losses).numpy(),
        torch.cat(features).numpy() if features else None,
        torch.cat(positions).numpy() if positions else np.zeros(0, np.int64), feature.label, selector,
    )  # fmt: skip


def merge_streams(parts: list[Stream]) -> Stream:
    """Consecutive shards' passes as one (rows concatenated in data order, the cells' top-k merged)."""
    if len(parts) == 1:
        return parts[0]
    classes = {p.probabilities.shape[1] for p in parts if len(p.labels)}
    if len(classes) > 1:
        raise ValueError(f"the model gave {sorted(classes)} classes on different shards: one count is needed")
    selector = parts[0].cells
    for part in parts[1:]:
        selector.merge(part.cells)
    features = [p.features for p in parts if p.features is not None]
    return Stream(
        np.concatenate([p.probabilities for p in parts if len(p.labels)] or [parts[0].probabilities]),
        np.concatenate([p.labels for p in parts]), np.concatenate([p.losses for p in parts]),
        np.concatenate(features) if features else None, np.concatenate([p.feature_index for p in parts]),
        parts[0].feature_layer, selector,
    )  # fmt: skip


def _probabilities(output: Any) -> Tensor:
    """Softmax of ``(N, K)`` logits; ``(N,)`` or ``(N, 1)`` logits become the two probabilities of a sigmoid."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; evaluate needs logits (N, K) as a tensor")
    logits = logits.float()
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        positive = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1 - positive, positive], 1)
    if logits.ndim != 2:
        raise ValueError(f"the model returned {tuple(logits.shape)}; evaluate needs logits (N, K)")
    return F.softmax(logits, 1)


def _pooled(features: Tensor) -> Tensor:
    """``(B, D)`` per example: spatial (or token) dimensions averaged away."""
    return features.flatten(2).mean(2) if features.ndim > 2 else features.reshape(features.shape[0], -1)


def _rows_kept(keep: np.ndarray | None, start: int, count: int) -> np.ndarray:
    if keep is None:
        return np.arange(count)
    inside = keep[(keep >= start) & (keep < start + count)]
    return inside - start
