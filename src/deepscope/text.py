"""Token attributions for text models: which tokens a prediction rests on.

:func:`explain_text` runs the attribution engine (:func:`deepscope.explain`) on the output of the
model's token-embedding layer instead of on discrete token ids, which have no gradient: a forward
hook replaces that layer's output by the points the method asks for (the embeddings themselves for
gradient × input, the straight path from a baseline to them for Integrated Gradients). A token's
score is its attribution summed over the embedding dimension, so Integrated Gradients keeps its
completeness axiom at the token level: the scores of an example sum to ``f(x) − f(x')``.

Each example is explained on its real tokens only (its attention mask), so padding neither gets a
score nor changes the others; examples of the same length (and the same other inputs) go through
the model together, in the engine's blocks of path points. The default baseline replaces every
token by the padding token and keeps the special tokens (``[CLS]``, ``[SEP]``) when a tokenizer
says which they are: the "empty sentence" the prediction is compared with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from markupsafe import Markup
from torch import Tensor, nn

from deepscope._tags import TAGS
from deepscope.attribution import explain
from deepscope.hooks import HookSet
from deepscope.layers import LayerSpec, model_device, resolve_layer
from deepscope.repro import library_versions
from deepscope.store import RunWriter, delete_run

__all__ = ["TokenAttribution", "explain_text"]

_METHODS = ("integrated_gradients", "input_x_gradient", "saliency")


@dataclass(frozen=True, slots=True)
class TokenAttribution:
    """Per-token attribution scores of a batch of texts.

    Attributes:
        scores: one ``(T_i,)`` float32 tensor per example, over its real (unpadded) tokens; positive
            tokens push the target class up.
        tokens: the tokens of each example (ids as text when no tokenizer was given).
        target: the class explained per example; ``predicted``: the model's class; ``probabilities``:
            ``(N, classes)`` softmax of the output.
        method: the attribution method; ``delta``: Integrated Gradients' completeness error per example
            (``Σ scores − (f(x) − f(x'))``), None for the other methods.
        class_names: a name per class when given.
    """

    scores: tuple[Tensor, ...]
    tokens: tuple[tuple[str, ...], ...]
    target: tuple[int, ...]
    predicted: tuple[int, ...]
    probabilities: Tensor
    method: str
    delta: Tensor | None = None
    class_names: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def label(self, index: int) -> str:
        """Class ``index``'s name (its number when no names were given)."""
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def html(self, example: int | None = None) -> Markup:
        """The texts with each token highlighted by its score (red: for the target, blue: against), escaped."""
        from deepscope._text_plots import highlighted_html  # the presentation layer, loaded to draw

        examples = range(len(self.scores)) if example is None else [self._check(example)]
        return highlighted_html([(self.tokens[i], self.scores[i].numpy(), self._caption(i)) for i in examples])

    def _repr_html_(self) -> str:
        return str(self.html())

    def save(self, out_png: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Draw the highlighted texts into ``out_png``."""
        from deepscope.plots import token_attribution_figure  # the presentation layer, loaded to draw

        rows = [(self.tokens[i], self.scores[i].numpy(), self._caption(i)) for i in range(len(self.scores))]
        return token_attribution_figure(rows, Path(out_png), title=title or self.method)

    def record(
        self, run_dir: str | os.PathLike[str], *, name: str = "token attributions", overwrite: bool = False
    ) -> Path:
        """Store the scores, tokens and classes in a run (``text/`` tags) for the report."""
        path = Path(run_dir)
        if overwrite:
            delete_run(path)
        with RunWriter(
            path, name=name, config={"task": "token attributions", **self.params}, versions=self.versions
        ) as w:
            w.set_meta(f"{TAGS.TEXT}/tokens", [list(t) for t in self.tokens])
            w.set_meta(f"{TAGS.TEXT}/captions", [self._caption(i) for i in range(len(self.scores))])
            w.set_meta(f"{TAGS.TEXT}/method", self.method)
            for i, scores in enumerate(self.scores):
                w.add_tensor(f"{TAGS.TEXT}/scores", i, scores.numpy().astype(np.float32))
        return path

    def _caption(self, i: int) -> str:
        p = float(self.probabilities[i, self.predicted[i]])
        text = f"target {self.label(self.target[i])}, predicted {self.label(self.predicted[i])} ({p:.0%})"
        return text if self.delta is None else f"{text}, completeness error {float(self.delta[i]):+.2g}"

    def _check(self, example: int) -> int:
        if not 0 <= example < len(self.scores):
            raise ValueError(f"example={example} but the batch holds {len(self.scores)} examples")
        return example


def explain_text(
    model: nn.Module,
    batch: Mapping[str, Tensor] | Tensor,
    *,
    method: str = "integrated_gradients",
    target: int | Sequence[int] | None = None,
    tokenizer: Any = None,
    embedding: LayerSpec | None = None,
    baseline: str | float | Tensor = "pad",
    class_names: Sequence[str] = (),
    **params: Any,
) -> TokenAttribution:
    """Attribute a text classifier's prediction to its input tokens (see the module docstring).

    Args:
        model: a classifier: Hugging Face (``output.logits``) or a PyTorch model returning ``(N, classes)``.
            Left unchanged (modes, ``requires_grad``, gradients and hooks restored).
        batch: a tokenizer's output (``input_ids``, ``attention_mask``…, passed as keywords), or a ``(N, T)``
            tensor of token ids passed positionally.
        method: ``"integrated_gradients"`` (default), ``"input_x_gradient"`` or ``"saliency"``.
        target: the class to explain (one, or one per example); default: the predicted class.
        tokenizer: turns ids back into tokens, and tells which tokens are special.
        embedding: the token-embedding layer (a name or module); default ``model.get_input_embeddings()``
            or the first ``nn.Embedding``.
        baseline: Integrated Gradients' reference: ``"pad"`` (the padding token's embedding, special tokens
            kept), ``"zeros"``, a number or an embedding tensor broadcastable to ``(1, T, D)``.
        class_names: a name per class, for display.
        **params: the method's parameters (e.g. ``n_steps=64`` for Integrated Gradients).

    Example:
        >>> batch = tokenizer(["a wonderful film"], return_tensors="pt")  # doctest: +SKIP
        >>> result = deepscope.explain_text(classifier, batch, tokenizer=tokenizer)  # doctest: +SKIP
        >>> result.scores[0].sum(), result.delta  # completeness: f(x) − f(baseline), up to delta  # doctest: +SKIP
    """
    if method not in _METHODS:
        valid = ", ".join(map(repr, _METHODS))
        raise ValueError(f"token attributions support the methods {valid}; got {method!r}")
    if method != "integrated_gradients" and baseline != "pad":
        raise ValueError(f"baseline= is Integrated Gradients' reference; method {method!r} takes none")
    ids, calls = _examples(batch, model_device(model))
    targets = _targets(target, len(calls))
    layer = _embedding_layer(model, embedding)
    n = len(ids)
    scores: list[Tensor] = [torch.empty(0)] * n
    probabilities: list[Tensor] = [torch.empty(0)] * n
    deltas: list[Tensor] = [torch.empty(0)] * n
    with HookSet() as hooks:
        wrapper = _FromEmbeddings(model, hooks, layer)
        for group in _alike(ids, calls):  # examples of one length and the same other inputs go through together
            wrapper.call = calls[group[0]]  # the inputs other than the embeddings (the ids' values are not used)
            rows = [ids[i] for i in group]
            embedded = wrapper.embed(_stacked(calls, group, rows)).detach()  # (n, T, D)
            with torch.no_grad():
                probs = torch.softmax(wrapper(embedded).float(), -1).cpu()
            chosen = [int(p.argmax()) if targets[i] is None else targets[i] for i, p in zip(group, probs, strict=True)]
            extra = dict(params)
            if method == "integrated_gradients":
                extra["baseline"] = _baseline(
                    baseline, [ids[i] for i in group], calls, group, wrapper, model, tokenizer
                )
            result = explain(wrapper, embedded, method, target=chosen, **extra)
            for k, i in enumerate(group):
                scores[i], probabilities[i] = result.maps[k].sum(-1).cpu(), probs[k]
                targets[i] = chosen[k]
                if "delta" in result.extras:
                    deltas[i] = result.extras["delta"][k].cpu()
    tokens = tuple(_tokens(row, tokenizer) for row in ids)
    stacked = torch.stack(probabilities)
    return TokenAttribution(
        tuple(scores), tokens, tuple(int(t) for t in targets), tuple(stacked.argmax(1).tolist()), stacked, method,
        torch.stack(deltas) if method == "integrated_gradients" else None, tuple(class_names),
        {"method": method, **{k: v for k, v in params.items() if isinstance(v, (int, float, str))}}, library_versions(),
    )  # fmt: skip


class _FromEmbeddings(nn.Module):
    """The model as a function of its token embeddings: the embedding layer's output is replaced by the input."""

    def __init__(self, model: nn.Module, hooks: HookSet, layer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.call: _Call = ((), {})
        self._points: Tensor | None = None
        self._seen: Tensor | None = None
        self._stop = False
        hooks.forward(layer, self._replace)

    def _replace(self, _module: nn.Module, _args: Any, output: Any) -> Tensor | None:
        if self._points is None:
            self._seen = output  # a plain pass: the embeddings themselves
            if self._stop:
                raise _Embedded  # nothing after the embeddings is needed
            return None
        if not isinstance(output, Tensor) or self._points.shape[1:] != output.shape[1:]:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"the embedding layer outputs {shape}, not embeddings shaped like {tuple(self._points.shape)}"
            )
        return self._points

    def embed(self, call: _Call) -> Tensor:
        """The embedding layer's output for ``call``'s token ids, ``(n, T, D)`` (the forward stops there)."""
        args, kwargs = call
        n = len(args[0] if args else kwargs["input_ids"])
        with torch.no_grad(), contextlib.suppress(_Embedded):
            self._stop = True
            try:
                self._run(call, n)
            finally:
                self._stop = False
        if self._seen is None:
            raise ValueError("the embedding layer did not run during the forward pass; pass embedding= the layer")
        seen, self._seen = self._seen, None
        return seen

    def forward(self, points: Tensor) -> Tensor:
        self._points = points
        try:
            output = self._run(self.call, len(points))
        finally:
            self._points = None
        logits = getattr(output, "logits", output)
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError(
                f"token attributions explain a classifier's (N, classes) scores; {type(self.model).__name__} returned "
                f"{type(output).__name__}: load it with a classification head (e.g. AutoModelForSequenceClassification)"
            )
        return logits

    def _run(self, call: _Call, n: int) -> Any:
        args, kwargs = call

        def grow(value: Any) -> Any:
            return value.expand(n, *value.shape[1:]) if isinstance(value, Tensor) else value

        return self.model(*map(grow, args), **{k: grow(v) for k, v in kwargs.items()})


_Call = tuple[tuple[Any, ...], dict[str, Any]]


class _Embedded(Exception):
    """The embedding layer has run: the rest of the forward pass is skipped."""


def _examples(batch: Mapping[str, Tensor] | Tensor, device: torch.device) -> tuple[list[Tensor], list[_Call]]:
    """Each example's real token ids ``(T_i,)`` and its call (inputs of batch size 1, padding removed)."""
    if isinstance(batch, Tensor):
        if batch.ndim != 2 or batch.is_floating_point():
            raise ValueError(f"token ids must be an integer (N, T) tensor, got {batch.dtype} {tuple(batch.shape)}")
        return [row for row in batch], [((row[None].to(device),), {}) for row in batch]
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(
            "batch must be a tokenizer's output (a mapping with input_ids) or an (N, T) tensor of token ids"
        )
    ids = batch["input_ids"]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (N, T), got {tuple(ids.shape)}")
    mask = batch.get("attention_mask")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    rows, calls = [], []
    for i in range(len(ids)):
        keep = real[i]
        if not keep.any():
            raise ValueError(f"example {i} has no real token (its attention mask is all zeros)")
        per_token = {
            k: v[i : i + 1, keep].to(device) if isinstance(v, Tensor) and v.shape == ids.shape else v
            for k, v in batch.items()
        }
        rows.append(ids[i, keep])
        calls.append(((), per_token))
    return rows, calls


def _targets(target: int | Sequence[int] | None, n: int) -> list[int | None]:
    if target is None or isinstance(target, int):
        return [target] * n
    chosen = [int(t) for t in target]
    if len(chosen) != n:
        raise ValueError(f"target has {len(chosen)} entries for {n} examples; give one class, or one per example")
    return list(chosen)


def _embedding_layer(model: nn.Module, embedding: LayerSpec | None) -> nn.Module:
    if embedding is not None:
        return resolve_layer(model, embedding)[1]
    getter = getattr(model, "get_input_embeddings", None)
    layer = getter() if callable(getter) else None
    if isinstance(layer, nn.Module):
        return layer
    found = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Embedding; pass embedding= its token-embedding layer")
    return found


def _baseline(
    baseline: str | float | Tensor,
    rows: list[Tensor],
    calls: list[_Call],
    group: list[int],
    wrapper: _FromEmbeddings,
    model: nn.Module,
    tokenizer: Any,
) -> str | float | Tensor:
    """Integrated Gradients' reference embeddings for a group of examples."""
    if not isinstance(baseline, str) or baseline == "zeros":
        return baseline
    if baseline != "pad":
        raise ValueError(f"unknown baseline {baseline!r}; valid: 'pad', 'zeros', a number or an embedding tensor")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is None:
        raise ValueError("baseline='pad' needs a padding token (a tokenizer or model.config.pad_token_id); use 'zeros'")
    special = torch.tensor(sorted(getattr(tokenizer, "all_special_ids", [])), dtype=rows[0].dtype)
    references = [torch.where(torch.isin(row, special), row, torch.full_like(row, pad)) for row in rows]
    return wrapper.embed(_stacked(calls, group, references))


def _alike(ids: list[Tensor], calls: list[_Call]) -> list[list[int]]:
    """Groups of examples with the same length and the same inputs besides the token ids, in first-seen order."""
    groups: list[list[int]] = []
    for i, (row, call) in enumerate(zip(ids, calls, strict=True)):
        for group in groups:
            j = group[0]
            if len(ids[j]) == len(row) and _same_besides_ids(calls[j], call):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _same_besides_ids(a: _Call, b: _Call) -> bool:
    (args_a, kwargs_a), (args_b, kwargs_b) = a, b
    if args_a or args_b:
        return True  # positional ids: nothing else
    for key in kwargs_a.keys() | kwargs_b.keys():
        if key == "input_ids":
            continue
        x, y = kwargs_a.get(key), kwargs_b.get(key)
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape == y.shape and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def _stacked(calls: list[_Call], group: list[int], rows: list[Tensor]) -> _Call:
    """The group's call with ``rows`` (one ``(T,)`` id tensor per example) as its token ids."""
    args, kwargs = calls[group[0]]
    device = (args[0] if args else kwargs["input_ids"]).device
    ids = torch.stack(rows).to(device)
    return ((ids,), {}) if args else ((), {**kwargs, "input_ids": ids})


def _tokens(ids: Tensor, tokenizer: Any) -> tuple[str, ...]:
    if tokenizer is None:
        return tuple(str(i) for i in ids.tolist())
    return tuple(tokenizer.convert_ids_to_tokens(ids.tolist()))
