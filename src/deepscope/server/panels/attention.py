"""Attention panel: a transformer's recorded attention, one example at a time (``attention/`` tags).

Reads what :meth:`deepscope.attention.Attention.record` stores, as the report's *Attention* section
does: per example (a tensor step) the ``(layers, heads, T, T)`` weights, the ``(T, T)`` rollout and the
``(layers, heads)`` entropy, plus the run's tokens, layer names and recorded view (layer and heads).
The head view, the per-head heat map, the rollout and the entropy heat map are drawn in the browser
from these numbers; the "every layer and head" overview is the report's own figure, as a PNG.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.server._figures import json_floats, png_uri
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["PANEL", "entropy_impl", "examples_impl", "layer_impl", "model_view_impl", "rollout_impl"]

_P = TAGS.ATTENTION
WEIGHTS, ROLLOUT, ENTROPY = f"{_P}/weights", f"{_P}/rollout", f"{_P}/entropy"
_DIGITS = 4  # the weights are stored as float16 (about 3 significant digits): 4 decimals lose nothing visible


def _available(reader: RunReader) -> bool:
    return WEIGHTS in reader.tensor_tags()


def _steps(reader: RunReader) -> list[int]:
    return [int(s) for s in reader.tensor_steps(WEIGHTS)]


def _example(reader: RunReader, example: int | None) -> tuple[int, int]:
    """``(position, step)`` of the recorded example ``example`` (a tensor step; ``None``: the first one).

    Raises:
        UnknownNameError: the run recorded no example at that step (the message lists those it did).
    """
    steps = _steps(reader)
    if example is None:
        return 0, steps[0]
    if example not in steps:
        raise UnknownNameError("attention example", str(example), [str(s) for s in steps])
    return steps.index(example), example


def _tokens(meta: dict[str, Any], position: int, count: int) -> list[str]:
    """The example's tokens: the run's token list (or the ``position``-th one of a list per example)."""
    tokens = meta.get(f"{_P}/tokens") or []
    if tokens and isinstance(tokens[0], list):
        tokens = tokens[position] if position < len(tokens) else []
    tokens = [str(t) for t in tokens]
    return tokens if len(tokens) == count else [str(i) for i in range(count)]  # positions when they disagree


def _layers(meta: dict[str, Any], count: int) -> list[str]:
    names = [str(n) for n in meta.get(f"{_P}/layers") or []]
    return names if len(names) == count else [f"layer {i}" for i in range(count)]


def _weights(reader: RunReader, step: int) -> np.ndarray:
    return reader.tensor(WEIGHTS, step).astype(np.float32)  # (L, H, T, T)


def _entropy(reader: RunReader, step: int, weights: np.ndarray) -> np.ndarray:
    """``(L, H)`` mean row entropy (nats): as stored, or from the weights when the run lacks it."""
    if ENTROPY in reader.tensor_tags():
        return reader.tensor(ENTROPY, step).astype(np.float64)
    w = weights.astype(np.float64)
    return -(w * np.log(np.clip(w, 1e-12, None))).sum(-1).mean(-1)


def _view(meta: dict[str, Any], entropy: np.ndarray) -> dict[str, Any]:
    """The recorded head view (layer, heads); as the report: the last layer and its 3 most focused heads."""
    layers, heads = entropy.shape
    view = meta.get(f"{_P}/view") or {}
    layer = int(view.get("layer", layers - 1))
    layer = layer if 0 <= layer < layers else layers - 1
    chosen = [int(h) for h in view.get("heads") or [] if 0 <= int(h) < heads]
    return {"layer": layer, "heads": chosen or [int(h) for h in np.argsort(entropy[layer], kind="stable")[:3]]}


def examples_impl(reader: RunReader) -> dict[str, Any]:
    """The recorded examples, layer names, head count and the recorded view.

    Returns:
        ``{"examples": [{"example", "tokens", "text"}], "layers", "heads", "view": {"layer", "heads"}}``:
        ``example`` is the value to pass as ``example=`` to the other routes (the tensor step),
        ``tokens`` its token count, ``text`` its tokens joined by spaces.

    Raises:
        UnknownNameError: the run holds no attention weights.
    """
    meta = reader.meta()
    steps = _steps(reader)  # raises for a run without weights
    first = _weights(reader, steps[0])
    examples = []
    for position, step in enumerate(steps):
        tokens = _tokens(meta, position, (first if position == 0 else _weights(reader, step)).shape[-1])
        examples.append({"example": step, "tokens": len(tokens), "text": " ".join(tokens)})
    entropy = _entropy(reader, steps[0], first)
    return {
        "examples": examples,
        "layers": _layers(meta, first.shape[0]),
        "heads": int(first.shape[1]),
        "view": _view(meta, entropy),
    }


def layer_impl(reader: RunReader, *, example: int | None = None, layer: int | None = None) -> dict[str, Any]:
    """Every head's ``query × key`` attention in one layer of one example.

    Args:
        reader: the open run.
        example: the example's step (see :func:`examples_impl`); default: the first one.
        layer: the layer index; default: the recorded view's layer.

    Returns:
        ``{"example", "layer", "name", "tokens", "weights"}``: ``weights[head][query][key]`` rounded to 4
        decimals (each row sums to 1).

    Raises:
        UnknownNameError: no such example.
        ValueError: ``layer`` is out of range (the message gives the valid range and names).
    """
    position, step = _example(reader, example)
    meta = reader.meta()
    weights = _weights(reader, step)
    names = _layers(meta, weights.shape[0])
    if layer is None:
        layer = _view(meta, _entropy(reader, step, weights))["layer"]
    if not 0 <= layer < len(names):
        raise ValueError(f"layer must be in 0..{len(names) - 1} ({', '.join(names)}), got {layer}")
    return {
        "example": step,
        "layer": layer,
        "name": names[layer],
        "tokens": _tokens(meta, position, weights.shape[-1]),
        "weights": json_floats(np.round(weights[layer].astype(np.float64), _DIGITS)),
    }


def rollout_impl(reader: RunReader, *, example: int | None = None) -> dict[str, Any]:
    """The attention rollout of one example (Abnar & Zuidema 2020), as :meth:`Attention.record` stored it.

    Returns:
        ``{"example", "tokens", "rollout"}``: ``rollout[query][key]``, each row summing to 1; row 0 is what
        the first token (``[CLS]`` for BERT-like models) draws from each input token through every layer.

    Raises:
        UnknownNameError: no such example, or the run stored no rollout.
    """
    position, step = _example(reader, example)
    rolled = reader.tensor(ROLLOUT, step).astype(np.float64)  # (T, T)
    return {
        "example": step,
        "tokens": _tokens(reader.meta(), position, rolled.shape[-1]),
        "rollout": json_floats(np.round(rolled, 6)),
    }


def entropy_impl(reader: RunReader, *, example: int | None = None) -> dict[str, Any]:
    """Each head's mean attention entropy in one example.

    Returns:
        ``{"example", "layers", "entropy", "uniform"}``: ``entropy[layer][head]`` in nats, averaged over the
        query tokens; ``uniform`` = ln(T), the entropy of a head spreading evenly over the T tokens.

    Raises:
        UnknownNameError: no such example.
    """
    _, step = _example(reader, example)
    weights = _weights(reader, step)
    return {
        "example": step,
        "layers": _layers(reader.meta(), weights.shape[0]),
        "entropy": json_floats(np.round(_entropy(reader, step, weights), 6)),
        "uniform": math.log(weights.shape[-1]),
    }


def model_view_impl(reader: RunReader, *, example: int | None = None) -> dict[str, Any]:
    """The report's model view of one example: every head of every layer as a small heat map (a PNG).

    Returns:
        ``{"example", "figure"}``: ``figure`` is a ``data:image/png`` URI.

    Raises:
        UnknownNameError: no such example.
    """
    from deepscope.plots import attention_model_view  # matplotlib: loaded when a figure is asked for

    _, step = _example(reader, example)
    weights = _weights(reader, step)
    figure = png_uri(lambda path: attention_model_view(weights, path, title="Every layer and head"))
    return {"example": step, "figure": figure}


PANEL = Panel(
    name="attention",
    title="Attention",
    available=_available,
    routes=(
        Route("examples", examples_impl),
        Route("layer", layer_impl),
        Route("rollout", rollout_impl),
        Route("entropy", entropy_impl),
        Route("model_view", model_view_impl),
    ),
)
