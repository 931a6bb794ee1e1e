"""``model_copy``: a deep copy of a model, also of one that ``torch.export.unflatten`` rebuilt."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["model_copy"]


def model_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, leaving out the tracing metadata of its fx graphs.

    The nodes of an exported graph keep fake tensors in ``node.meta``, which cannot be copied;
    running a graph never reads that metadata, so the copy's nodes start with empty ones.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        graph = getattr(module, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            for node in graph.nodes:
                memo[id(node.meta)] = {}
    return copy.deepcopy(model, memo)
