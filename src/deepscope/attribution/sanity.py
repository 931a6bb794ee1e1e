"""Does the map depend on the model? The parameter-randomisation sanity check.

:func:`sanity_check` (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): cascading
randomisation of the model's layers from the top down, with the similarity of each map to the
original by Spearman rank correlation (:func:`spearman`) and SSIM (:func:`ssim`). A method whose
maps do not change when the model is destroyed does not explain the model. The user's model is
never touched: the check randomises a deep copy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope._model_copy import model_copy
from deepscope.attribution._autograd import forward_scores
from deepscope.attribution.base import Attribution, build_method, check_inputs, explain
from deepscope.attribution.result import AttributionMap
from deepscope.hooks import HookSet
from deepscope.layers import LayerSpec, resolve_layers
from deepscope.targets import ClassTarget, PredictedClass, Target, as_target

__all__ = ["SIMILARITIES", "SanityCheck", "sanity_check", "spearman", "ssim"]


# --------------------------------------------------------------------------- similarities


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks ``0 … L−1`` along the last dimension of ``(N, L)``; tied values share their mean rank."""
    n, length = x.shape
    values, order = x.sort(dim=1, stable=True)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    group = (new.cumsum(dim=1) - 1) + torch.arange(n, device=x.device)[:, None] * length  # (N, L) global tie groups
    position = torch.arange(length, device=x.device, dtype=torch.float64).expand(n, length)
    total = torch.zeros(n * length, device=x.device, dtype=torch.float64).index_add_(
        0, group.flatten(), position.flatten()
    )
    count = torch.zeros(n * length, device=x.device, dtype=torch.float64).index_add_(
        0, group.flatten(), torch.ones_like(position).flatten()
    )
    mean = (total / count.clamp_min(1))[group]  # (N, L) mean rank of each sorted value's tie group
    return torch.empty_like(mean).scatter_(1, order, mean)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample, ties given their average rank (as ``scipy.stats.spearmanr``).

    Args:
        a: ``(N, ...)``.
        b: same shape.

    Returns:
        ``(N,)`` correlations; ``NaN`` where either sample is constant.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two batches (N, ...) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = _average_ranks(a.detach().flatten(1)), _average_ranks(b.detach().flatten(1).to(a.device))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    corr = (ra * rb).sum(dim=1) / ((ra**2).sum(dim=1) * (rb**2).sum(dim=1)).sqrt()
    return corr.float()


def ssim(
    a: Tensor, b: Tensor, *, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> Tensor:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of single-channel maps.

    The paper's Gaussian window (σ = 1.5, truncated at 3.5σ: 11 × 11), population statistics, and
    the mean of the SSIM map over the positions where the window fits inside the image. Equals
    ``skimage.metrics.structural_similarity(a, b, data_range=..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``.

    Args:
        a: ``(N, H, W)``.
        b: same shape.
        data_range: the value range of the maps (``1`` for maps in ``[0, 1]``).
        sigma: window standard deviation in pixels.
        k1: stabilising constant of the luminance term.
        k2: stabilising constant of the contrast term.

    Returns:
        ``(N,)`` mean SSIM.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"need two batches of maps (N, H, W) of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    r = int(3.5 * sigma + 0.5)
    size = 2 * r + 1
    if min(a.shape[1:]) < size:
        raise ValueError(f"SSIM's {size} × {size} window does not fit maps of size {tuple(a.shape[1:])}")
    precision = torch.float32 if a.device.type == "mps" else torch.float64  # variances cancel: use doubles
    x, y = a.detach().to(precision), b.detach().to(device=a.device, dtype=precision)
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(5, 1, 1, size), groups=5)  # valid, along W
    ux, uy, uxx, uyy, uxy = F.conv2d(stack, g.view(1, 1, -1, 1).expand(5, 1, size, 1), groups=5).unbind(1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))  # (N, H-2r, W-2r)
    return s.flatten(1).mean(dim=1).float()


def _unit(maps: Tensor) -> Tensor:
    """Min-max scale each map of ``(N, ...)`` to ``[0, 1]``; constant maps become zeros."""
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(torch.finfo(flat.dtype).tiny)).view_as(maps)


def _spearman_similarity(reference: Tensor, current: Tensor) -> Tensor:
    return spearman(reference, current).nan_to_num(0.0)  # a constant map carries no ranking: no similarity


def _ssim_similarity(reference: Tensor, current: Tensor) -> Tensor:
    if reference.ndim != 3:
        raise ValueError(
            f"SSIM compares image-shaped maps (N, H, W); these maps are {tuple(reference.shape)}: "
            "use similarity=('spearman',)"
        )
    return ssim(_unit(reference), _unit(current), data_range=1.0)


SIMILARITIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "spearman": _spearman_similarity,
    "ssim": _ssim_similarity,
}
"""Similarity of magnitude maps ``(N, ...)`` to the original ones, ``(N,)`` per measure."""


# --------------------------------------------------------------------------- sanity check


@dataclass(frozen=True)
class SanityCheck:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) of one method.

    Attributes:
        method: the method's registry key.
        layers: the randomised layers, top (output side) first; step ``i`` has randomised
            ``layers[: i + 1]``.
        similarity: ``{measure: (L, N)}`` similarity of each step's map to the original map.
        measure: the measure the verdict uses.
        threshold: the verdict's threshold.
        passed: whether the mean similarity after the last step is below ``threshold``: the maps
            depend on the parameters, as an explanation of the model must.
        maps: with ``keep_maps=True``, ``(L + 1, N, ...)`` magnitude maps, the original first.
    """

    method: str
    layers: tuple[str, ...]
    similarity: dict[str, Tensor]
    measure: str
    threshold: float
    passed: bool
    maps: Tensor | None = None

    def mean(self, measure: str | None = None) -> Tensor:
        """``(L,)`` similarity averaged over samples, per cascade step."""
        return self.similarity[measure or self.measure].mean(dim=1)

    @property
    def final(self) -> float:
        """Mean similarity, by :attr:`measure`, once every layer is randomised."""
        return float(self.mean()[-1])

    def __repr__(self) -> str:
        verdict = "passes" if self.passed else "fails"
        return (
            f"SanityCheck({self.method!r} {verdict}: {self.measure} {self.final:.3f} after randomising "
            f"{len(self.layers)} layers, threshold {self.threshold})"
        )


def _magnitude(result: AttributionMap) -> Tensor:
    """Per-position magnitude: ``|maps|`` summed over channels for per-channel maps."""
    maps = result.maps.abs()
    return maps.sum(dim=1) if maps.ndim == 4 else maps


def _weighted_layers(model: nn.Module, inputs: Tensor) -> list[tuple[str, nn.Module]]:
    """Modules owning a weight matrix or kernel (a parameter of rank ≥ 2), in order of execution."""
    candidates = {
        name: module
        for name, module in model.named_modules()
        if any(p.ndim >= 2 for p in module.parameters(recurse=False))
    }
    order: list[str] = []

    def make_hook(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(_module: nn.Module, _args: Any) -> None:
            if name not in order:
                order.append(name)

        return hook

    with HookSet() as hooks, torch.inference_mode():
        for name, module in candidates.items():
            hooks.forward_pre(module, make_hook(name))
        model(inputs)
    return [(name, candidates[name]) for name in order]


def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw the module's own parameters from PyTorch's default ``U(−1/√fan_in, 1/√fan_in)``, seeded."""
    params = list(module.parameters(recurse=False))
    weight = next((p for p in params if p.ndim >= 2), None)
    default_fan = weight[0].numel() if weight is not None else 1
    with torch.no_grad():
        for param in params:
            bound = 1.0 / math.sqrt(max(param[0].numel() if param.ndim >= 2 else default_fan, 1))
            values = torch.rand(param.shape, generator=generator, device=generator.device) * 2 - 1
            param.copy_((values * bound).to(device=param.device, dtype=param.dtype))


def _fixed_target(model: nn.Module, x: Tensor, target: Target) -> Target:
    """The predicted class becomes fixed class indices, so randomisation cannot change what is explained."""
    if not isinstance(target, PredictedClass):
        return target
    _, output = forward_scores(model, x, target)
    if output.ndim != 2 or output.shape[1] < 2:
        return target
    return ClassTarget(tuple(output.argmax(dim=1).tolist()))


def _with_generator(method: Attribution, seed: int) -> Attribution:
    """A copy of ``method`` with a fresh generator seeded ``seed``, if the method is stochastic."""
    if dataclasses.is_dataclass(method) and "generator" in {f.name for f in dataclasses.fields(method)}:
        return dataclasses.replace(method, generator=torch.Generator().manual_seed(seed))  # type: ignore[type-var]
    return method


def sanity_check(
    model: nn.Module,
    inputs: Tensor,
    method: str | Attribution,
    target: Any = None,
    layer: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    similarity: str | Sequence[str] = ("spearman", "ssim"),
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
    keep_maps: bool = False,
    **params: Any,
) -> SanityCheck:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    On a deep copy of the model (the user's model is never touched), the layers that own a weight
    (convolutions, linear layers…; normalisation layers keep theirs) are re-initialised one after
    the other from the output down, each from PyTorch's default ``U(−1/√fan_in, 1/√fan_in)``
    drawn from ``generator``. After each step the method's map (:func:`deepscope.explain`, for
    the class the intact model predicted when ``target=None``) is compared with the original map:
    Spearman rank correlation of the absolute maps (:func:`spearman`; a constant map scores 0),
    and SSIM of the absolute maps min-max scaled to ``[0, 1]`` (:func:`ssim`). Per-channel maps
    are reduced to ``|maps|`` summed over channels first.

    Verdict: the method passes when the mean similarity by the first measure of ``similarity``
    falls below ``threshold`` (default 0.5) once all layers are randomised. Adebayo et al. found
    that gradients, SmoothGrad and Grad-CAM pass, while Guided Backprop's maps stay close to the
    original (they mostly reflect the input's edges) and fail.

    A stochastic method gets a fresh generator with the same seed (drawn once from ``generator``)
    at every step, so its noise is identical and only the parameters change.

    Args:
        model: the model (copied; memory for one more copy is needed).
        inputs: the inputs to explain.
        method: a registry key or a configured method.
        target: as in :func:`deepscope.explain`.
        layer: for layer methods, as in :func:`deepscope.explain`.
        similarity: ``"spearman"`` and/or ``"ssim"``.
        threshold: the similarity below which the method passes.
        generator: source of the re-initialisations (default: a fresh generator seeded from the
            operating system).
        keep_maps: keep every step's magnitude maps in the result (for figures).
        **params: the method's parameters.

    Returns:
        A :class:`SanityCheck` with the per-layer similarities and the verdict.

    Example:
        >>> check = sanity_check(model, images, "gradcam", generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> check.passed, check.mean("spearman")  # doctest: +SKIP
        (True, tensor([0.41, 0.22, ..., 0.03]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    measures = (similarity,) if isinstance(similarity, str) else tuple(similarity)
    unknown = sorted(set(measures) - set(SIMILARITIES))
    if not measures or unknown:
        raise ValueError(f"similarity must name one or more of {', '.join(SIMILARITIES)}; got {similarity!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    key, algo = build_method(method, params)
    layer_names = None if layer is None else list(resolve_layers(model, layer))  # names work on the copy
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    try:
        subject = model_copy(model)
    except Exception as error:  # any failure to copy means the check cannot run safely
        raise TypeError(f"sanity_check randomises a deep copy of the model, and copying failed: {error}") from error
    subject.eval()
    x = check_inputs(subject, inputs)
    tgt = _fixed_target(subject, x, as_target(target))
    cascade = _weighted_layers(subject, x)[::-1]  # top layer first
    if not cascade:
        raise ValueError("the model has no layer with a weight to randomise")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))

    def explain_step() -> Tensor:
        return _magnitude(explain(subject, x, _with_generator(algo, seed), target=tgt, layer=layer_names))

    reference = explain_step()
    kept = [reference] if keep_maps else []
    values: dict[str, list[Tensor]] = {m: [] for m in measures}
    for _, module in cascade:
        _reinitialise(module, generator)
        current = explain_step()
        for m in measures:
            values[m].append(SIMILARITIES[m](reference, current))
        if keep_maps:
            kept.append(current)
    table = {m: torch.stack(v) for m, v in values.items()}  # each (L, N)
    final = float(table[measures[0]][-1].mean())
    return SanityCheck(
        method=key,
        layers=tuple(name for name, _ in cascade),
        similarity=table,
        measure=measures[0],
        threshold=threshold,
        passed=final < threshold,
        maps=torch.stack(kept) if keep_maps else None,
    )
