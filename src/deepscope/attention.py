"""Attention weights of transformers, and attention rollout (Abnar & Zuidema 2020).

:func:`extract` runs one forward pass and returns every layer's attention probabilities,
``(N, heads, query, key)`` per layer (``Attention.weights`` stacks them):

- Hugging Face models are called with ``output_attentions=True``. Fused implementations (``sdpa``,
  flash) return no weights — transformers 5 returns an empty tuple rather than an error — so the
  model is switched to ``"eager"`` for the call and switched back afterwards.
- Plain PyTorch models: every ``nn.MultiheadAttention`` is asked for its per-head weights
  (``need_weights=True, average_attn_weights=False``) by a forward pre-hook, and a forward hook
  keeps them. With weights requested, PyTorch computes the attention explicitly instead of with
  its fused kernel, so the module's output equals the usual one to float rounding (about 1e-7),
  not bit for bit. PyTorch's fused inference fast path (which skips the module) is switched off
  for the call. Hugging Face models in eager mode return the same bits with or without weights.

Padding: keys outside the attention mask get (≈) zero weight from the model itself; ``mask`` records
which positions are real, and :func:`rollout` uses it to keep padded positions out.

:func:`rollout`: heads fused (mean by default), the residual stream added as ``0.5·W + 0.5·I``, rows
re-normalised to sum to 1, then the layers multiplied from the first to the last, so
``R = Ã_L ⋯ Ã_1``: row ``i`` of ``R`` is how much output token ``i`` draws on each input token.

Vision transformers: :meth:`Attention.patch_rollout` turns the rollout into one ``(h, w)`` map per
image over the square patch grid, the class token's row (or, without a class token, the mean row)
renormalised to sum to 1. torchvision's ``VisionTransformer`` works as a plain PyTorch model: its
blocks call ``nn.MultiheadAttention`` with ``need_weights=False``, which the pre-hook overrides.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from markupsafe import Markup
from torch import Tensor, nn

from deepscope._tags import TAGS
from deepscope.guard import preserved
from deepscope.hooks import HookSet
from deepscope.layers import model_device
from deepscope.repro import library_versions
from deepscope.store import RunWriter, delete_run

__all__ = ["Attention", "extract", "rollout"]

HeadFusion = Literal["mean", "max", "min"]


@dataclass(frozen=True, slots=True)
class Attention:
    """Attention probabilities of one batch, layer by layer.

    Attributes:
        per_layer: one ``(N, heads, query, key)`` float32 CPU tensor per layer (as the model produced
            them: no copy); each row sums to 1. :attr:`weights` stacks them.
        mask: ``(N, key)`` bool, True for real (not padded) positions.
        layers: a name per layer (``"layer 0"``… for Hugging Face models, module names otherwise).
        tokens: the tokens of each example, when a tokenizer was given.
        source: ``"huggingface"`` or ``"torch"``.
    """

    per_layer: tuple[Tensor, ...]
    mask: Tensor
    layers: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...] = ()
    source: str = "torch"
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def weights(self) -> Tensor:
        """``(N, layers, heads, query, key)``: the layers stacked (a new tensor on every access)."""
        return torch.stack(self.per_layer, 1)

    def rollout(self, *, head_fusion: HeadFusion = "mean", residual: float = 0.5) -> Tensor:
        """:func:`rollout` of every example, padded positions left out: ``(N, query, key)``."""
        return rollout(self.per_layer, mask=self.mask, head_fusion=head_fusion, residual=residual)

    def patch_rollout(
        self, *, size: int | tuple[int, int] | None = None, head_fusion: HeadFusion = "mean", residual: float = 0.5
    ) -> Tensor:
        """The rollout as image maps for vision transformers: ``(N, h, w)``, each summing to 1.

        The tokens must be a square patch grid in row-major order, optionally after one leading class
        token (torchvision's and timm's ViT layout). With ``1 + h·w`` tokens the map is the class token's
        row (query 0) over the patches, the class token's own share dropped: what the classifier reads
        draws on each patch. With ``h·w`` tokens (no class token, e.g. a pooled head) it is the mean of
        the rows, what the tokens draw on each patch on average. A class token that draws nothing from
        the patches (identity attention) gives an all-zero map.

        Args:
            size: upsample bilinearly (``align_corners=False``) to this ``(H, W)`` (an int: square), e.g. the
                input's size; the upsampled map is renormalised to sum to 1 again.
            head_fusion: see :func:`rollout`.
            residual: see :func:`rollout`.

        Raises:
            ValueError: the token count is neither ``h·w`` nor ``1 + h·w`` with ``h = w``, ``size`` is not
                positive, or the weights come from text (a tokenizer was given).
        """
        out = (size, size) if isinstance(size, int) else size
        if out is not None and (
            len(out) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in out)
        ):
            raise ValueError(f"size must be a positive int or an (H, W) pair of them, got {size!r}")
        if self.tokens:  # a text's token count can happen to be 1 + h·w: refuse it rather than draw nonsense
            raise ValueError("patch_rollout is for vision transformers; these weights come from text (it has tokens)")
        skip, side = _patch_grid(self.mask.shape[-1])
        result = self.rollout(head_fusion=head_fusion, residual=residual)  # (N, T, T)
        # the class token's row over the patches, or the mean row (padded rows are zero: the renormalisation
        # below makes it the mean over the real rows)
        maps = result[:, 0, 1:] if skip else result.mean(1)  # (N, h·w)
        maps = maps.reshape(-1, side, side).float()  # (N, h, w), row-major like the patch embedding
        if out is not None:
            maps = F.interpolate(maps[:, None], size=tuple(out), mode="bilinear", align_corners=False)[:, 0]
        return maps / maps.sum((-2, -1), keepdim=True).clamp_min(1e-12)  # (N, h, w) or (N, H, W)

    def record(
        self,
        run_dir: str | os.PathLike[str],
        *,
        example: int = 0,
        name: str = "attention",
        overwrite: bool = False,
        layer: int | None = None,
        heads: Sequence[int] | None = None,
    ) -> Path:
        """Store one example's weights, rollout and entropies in a run (``attention/`` tags) for the report.

        ``layer`` and ``heads`` choose the report's head view (default: the last layer, its three most
        focused heads).
        """
        self._check(example)
        count, width = len(self.per_layer), self.per_layer[0].shape[1]
        chosen = count - 1 if layer is None else layer
        if not 0 <= chosen < count or any(not 0 <= h < width for h in heads or ()):
            raise ValueError(f"layer must be in 0..{count - 1} and heads in 0..{width - 1}; got {layer} and {heads}")
        shown = list(heads) if heads else self.entropy()[example, chosen].argsort()[:3].tolist()
        path = Path(run_dir)
        if overwrite:
            delete_run(path)
        real = self.mask[example]
        keep = real.nonzero().flatten()  # the real positions only: padding is not drawn
        weights = self.weights[example][..., keep[:, None], keep]  # (L, H, T, T)
        with RunWriter(
            path, name=name, config={"task": "attention", "source": self.source}, versions=self.versions
        ) as w:
            w.set_meta(f"{TAGS.ATTENTION}/tokens", [self._tokens(example)[i] for i in keep.tolist()])
            w.set_meta(f"{TAGS.ATTENTION}/layers", list(self.layers))
            w.set_meta(f"{TAGS.ATTENTION}/view", {"layer": chosen, "heads": [int(h) for h in shown]})
            w.add_tensor(f"{TAGS.ATTENTION}/weights", 0, weights.numpy().astype(np.float16))
            w.add_tensor(f"{TAGS.ATTENTION}/rollout", 0, rollout(weights).numpy().astype(np.float32))
            w.add_tensor(f"{TAGS.ATTENTION}/entropy", 0, self.entropy()[example].numpy().astype(np.float32))
        return path

    def panel(self, example: int = 0) -> Markup:
        """An interactive head view of one example (HTML, no network): pick the layer and heads, hover a token."""
        from deepscope._attention_panel import head_view_html  # the presentation layer, loaded to draw

        keep = self.mask[self._check(example)].nonzero().flatten()
        weights = self.weights[example][..., keep[:, None], keep].numpy()
        tokens = [self._tokens(example)[i] for i in keep.tolist()]
        return head_view_html(tokens, weights, list(self.layers), element_id=f"attention-{id(self):x}-{example}")

    def _repr_html_(self) -> str:
        return str(self.panel(0))

    def _tokens(self, example: int) -> list[str]:
        return list(self.tokens[example]) if self.tokens else [str(i) for i in range(self.mask.shape[-1])]

    def _check(self, example: int) -> int:
        if not 0 <= example < self.mask.shape[0]:
            raise ValueError(f"example={example} but the batch holds {self.mask.shape[0]} examples")
        return example

    def entropy(self) -> Tensor:
        """``(N, layers, heads)`` mean entropy (nats) of each head's rows over the real query positions.

        Low entropy: the head attends to few tokens; ``log(length)``: it spreads evenly.
        """
        real = self.mask[:, None, :].float()  # (N, 1, Q)
        rows = [-(w * w.clamp_min(1e-12).log()).sum(-1) for w in self.per_layer]  # each (N, H, Q)
        return torch.stack([(r * real).sum(-1) / real.sum(-1).clamp_min(1) for r in rows], 1)


def extract(
    model: nn.Module,
    inputs: Mapping[str, Tensor] | Tensor | Sequence[Tensor],
    *,
    tokenizer: Any = None,
) -> Attention:
    """Every layer's attention probabilities for ``inputs`` (see the module docstring).

    Example:
        >>> batch = tokenizer(["the cat sat"], return_tensors="pt")  # doctest: +SKIP
        >>> maps = deepscope.attention.extract(model, batch, tokenizer=tokenizer)  # doctest: +SKIP
        >>> maps.weights.shape, maps.rollout().shape  # doctest: +SKIP
        (torch.Size([1, 6, 12, 5, 5]), torch.Size([1, 5, 5]))

    Args:
        model: a Hugging Face model (``model.config`` present) or a PyTorch model with ``nn.MultiheadAttention``
            modules. It is left unchanged (eval mode for the call, attention implementation restored).
        inputs: a tokenizer's output (``input_ids``, ``attention_mask``…) for Hugging Face models; the
            positional input(s) of a PyTorch model (a ``src_key_padding_mask`` keyword, if any, passes through
            a mapping).
        tokenizer: turns ``input_ids`` back into tokens for display.

    Raises:
        ValueError: the model exposes no attention weights.
    """
    device = model_device(model)
    huggingface = _is_huggingface(model)
    with preserved(model, keep_model_hooks=huggingface), torch.no_grad():  # its own output hooks stay
        model.eval()
        if huggingface:
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in dict(inputs).items()}
            weights, mask, names = _huggingface(model, batch)
            source = "huggingface"
        else:
            weights, mask, names = _torch_modules(model, inputs, device)
            source = "torch"
    tokens: tuple[tuple[str, ...], ...] = ()
    if tokenizer is not None and isinstance(inputs, Mapping) and "input_ids" in inputs:
        tokens = tuple(tuple(tokenizer.convert_ids_to_tokens(row.tolist())) for row in inputs["input_ids"])
    per_layer = tuple(w.float().cpu() for w in weights)
    return Attention(per_layer, mask.cpu(), names, tokens, source, library_versions())


def rollout(
    weights: Tensor | Sequence[Tensor],
    *,
    mask: Tensor | None = None,
    head_fusion: HeadFusion = "mean",
    residual: float = 0.5,
) -> Tensor:
    """Attention rollout: ``Ã_l = (1 − r)·fuse(W_l) + r·I`` with rows re-normalised, ``R = Ã_L ⋯ Ã_1``.

    Args:
        weights: ``(layers, heads, query, key)`` or ``(N, layers, heads, query, key)`` attention probabilities,
            or one ``(N, heads, query, key)`` tensor per layer.
        mask: ``(N, key)`` (or ``(key,)``) True for real positions; padded rows and columns are zeroed before
            the re-normalisation, so padding neither receives nor passes on attention.
        head_fusion: ``"mean"`` (the paper's), ``"max"`` or ``"min"`` over the heads.
        residual: ``r``, the weight of the identity (the residual connection); the paper's 0.5.

    Returns:
        ``(query, key)`` or ``(N, query, key)``: every row sums to 1 over the real positions.
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    if not 0 <= residual <= 1:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    layers = list(weights) if not isinstance(weights, Tensor) else None
    single = isinstance(weights, Tensor) and weights.ndim == 4
    if layers is None:
        w = weights[None] if single else weights
        if w.ndim != 5 or w.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"weights must be (layers, heads, T, T) or (N, layers, heads, T, T), got {tuple(weights.shape)}"
            )
        layers = list(w.unbind(1))  # views, one (N, H, T, T) per layer
    if not layers or any(t.ndim != 4 or t.shape[-1] != t.shape[-2] for t in layers):
        raise ValueError("per-layer weights must each be (N, heads, T, T)")
    fuse = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[head_fusion]
    a = torch.stack([fuse(t, 1).float() for t in layers], 1)  # (N, L, T, T), fresh: the steps below work in place
    a.mul_(1 - residual).diagonal(dim1=-2, dim2=-1).add_(residual)  # (1 − r)·W + r·I, in place
    if mask is not None:
        real = (mask[None] if mask.ndim == 1 else mask).to(a.device, a.dtype)  # (N, T)
        if real.shape != (a.shape[0], a.shape[-1]):
            raise ValueError(
                f"mask must be (N, T) = ({a.shape[0]}, {a.shape[-1]}) like the weights (one row per example, one "
                f"entry per token); got {tuple(mask.shape)}"
            )
        a.mul_(real[:, None, :, None]).mul_(real[:, None, None, :])
    a.div_(a.sum(-1, keepdim=True).clamp_min_(1e-12))  # rows (not columns) sum to 1
    result = a[:, 0]
    for layer in range(1, a.shape[1]):
        result = a[:, layer] @ result  # later layers on the left: R = Ã_L ⋯ Ã_1
    result = result.to(layers[0].dtype)
    return result[0] if single else result


def _patch_grid(tokens: int) -> tuple[int, int]:
    """``(class tokens, grid side)`` for ``tokens`` laid out as ``[class token] + side × side`` patches."""
    for skip in (0, 1):  # all tokens are patches (tried first, as the CAM methods do), or a leading class token
        side = math.isqrt(max(tokens - skip, 0))
        if side > 0 and side * side == tokens - skip:
            return skip, side
    raise ValueError(
        f"patch_rollout needs the tokens of a square patch grid, h·w or 1 + h·w (a leading class token) with "
        f"h = w; got {tokens} tokens, and neither {tokens} nor {tokens - 1} is a square. For text or non-square "
        "grids use rollout(), which returns the (N, query, key) matrix"
    )


def _is_huggingface(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "_attn_implementation")


def _huggingface(model: nn.Module, batch: dict[str, Any]) -> tuple[list[Tensor], Tensor, tuple[str, ...]]:
    with _eager(model):
        output = model(**batch, output_attentions=True)
    found = getattr(output, "attentions", None)
    if not found:
        raise ValueError(f"{type(model).__name__} returned no attention weights, even with eager attention")
    weights = list(found)  # (N, H, T, T) per layer
    mask = batch.get("attention_mask")
    shape = weights[0].shape
    real = mask.bool() if mask is not None else torch.ones(shape[0], shape[-1], dtype=torch.bool)
    return weights, real, tuple(f"layer {i}" for i in range(len(weights)))


@contextlib.contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    """Run with eager attention (the only implementation that returns weights), then restore the original."""
    original = model.config._attn_implementation
    switch = original != "eager" and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(original)


def _torch_modules(model: nn.Module, inputs: Any, device: torch.device) -> tuple[list[Tensor], Tensor, tuple[str, ...]]:
    modules = {name: m for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no nn.MultiheadAttention module and is not a Hugging Face model: "
            "no attention weights to read"
        )
    captured: dict[str, Tensor] = {}

    def ask_for_weights(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured.setdefault(name, output[1])

        return hook

    args, kwargs = _call_arguments(inputs, device)
    fast_path = torch.backends.mha.get_fastpath_enabled()
    with HookSet() as hooks:
        for name, module in modules.items():
            hooks.forward_pre(module, ask_for_weights, with_kwargs=True)
            hooks.forward(module, keep(name))
        torch.backends.mha.set_fastpath_enabled(False)  # the fused path skips the modules (and their hooks)
        try:
            model(*args, **kwargs)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast_path)
    missing = [name for name in modules if name not in captured]
    if missing:
        raise ValueError(f"attention module(s) {', '.join(missing)} did not run during the forward pass")
    weights = [captured[name] for name in modules]  # (N, H, T, S) per layer
    padding = kwargs.get("src_key_padding_mask")
    shape = weights[0].shape
    real = ~padding.bool() if padding is not None else torch.ones(shape[0], shape[-1], dtype=torch.bool)
    return weights, real, tuple(modules)


def _call_arguments(inputs: Any, device: torch.device) -> tuple[tuple, dict]:
    if isinstance(inputs, Tensor):
        return (inputs.to(device),), {}
    if isinstance(inputs, Mapping):
        values = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        return (), values
    return tuple(v.to(device) if isinstance(v, Tensor) else v for v in inputs), {}
