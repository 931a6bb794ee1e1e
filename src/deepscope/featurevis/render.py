"""Optimise an image for an objective: :func:`feature_vis`, and one image per channel: :func:`feature_vis_grid`.

Each step: the parameterisation gives the images, the robustness transforms move them a little,
the model runs only as far as the objective's layers (the rest of the forward pass is skipped),
and Adam follows the objective's gradient *with respect to the image only*: the parameters'
``requires_grad`` is switched off for the run (restored afterwards with the rest of the model state
by :func:`deepscope.guard.preserved`), so no weight gradient is ever computed or accumulated. The
cost of a step is one forward and one backward pass to the input, the floor.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from deepscope._forward import forward_until
from deepscope._progress import track
from deepscope.attribution.backprop_rules import check_rules_reach, relu_rules
from deepscope.featurevis.objectives import IMAGE, OUTPUT, Objective, channel, class_logit, neuron
from deepscope.featurevis.param import ImageParam, make_param
from deepscope.featurevis.transforms import Transform, resolve
from deepscope.guard import preserved
from deepscope.hooks import HookSet
from deepscope.layers import LayerSpec, model_device, resolve_layer, resolve_layers
from deepscope.repro import library_versions

__all__ = ["FeatureVis", "feature_vis", "feature_vis_grid"]


@dataclass(frozen=True, slots=True)
class FeatureVis:
    """Optimised images and how they were made.

    Attributes:
        images: ``(B, 3, H, W)`` float32 in the parameterisation's range (``[0, 1]`` for the built-ins), CPU.
        curve: ``(steps, B)`` the objective of each image at each step (on the transformed image).
        objective: the objective's description.
        labels: a caption per image (e.g. its channel).
        params: the settings; ``versions``: library versions.
    """

    images: Tensor
    curve: Tensor
    objective: str
    labels: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def save(self, out_png: str | Path, *, title: str | None = None) -> Path:
        """Draw the images as a tile grid into ``out_png``."""
        from deepscope.plots import feature_vis_figure  # the presentation layer, loaded to draw

        return feature_vis_figure(self.images.numpy(), list(self.labels), Path(out_png), title=title or self.objective)

    def _repr_png_(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.save(Path(tmp) / "featurevis.png").read_bytes()


def feature_vis(
    model: nn.Module,
    objective: Objective | str,
    *,
    size: int | tuple[int, int] = 128,
    steps: int = 512,
    lr: float = 0.05,
    param: str | ImageParam = "fourier",
    transforms: str | Transform | Sequence[Transform] | None = "standard",
    batch: int = 1,
    generator: torch.Generator | None = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    color: Tensor | None = None,
    labels: Sequence[str] = (),
    redirect: int = 16,
) -> FeatureVis:
    """The image(s) that maximise ``objective`` (Olah et al. 2017), by Adam on the parameterised image.

    Args:
        model: the network (left unchanged: modes, ``requires_grad``, ``.grad`` and hooks restored).
        objective: an :class:`~deepscope.featurevis.objectives.Objective`, or ``"layer:channel"``.
        size: image side (or ``(H, W)``) before the transforms.
        steps: optimisation steps.
        lr: Adam's learning rate.
        param: ``"fourier"`` (decorrelated colour, the default), ``"pixels"``, or an ``ImageParam``.
        transforms: ``"standard"`` (Lucid's recipe), ``"none"``, or transform callables.
        batch: images optimised together (each gets its own start; see ``diversity``).
        generator: every random choice (start, transforms); default ``torch.Generator().manual_seed(0)``.
        preprocess: applied to the transformed images before the model (e.g. ImageNet normalisation).
        color: the Fourier parameterisation's colour matrix (:func:`~deepscope.featurevis.param.color_correlation`).
        labels: a caption per image.
        redirect: for this many first steps, ReLUs pass the gradient where it would switch them on (Lucid's
            redirected ReLU, :mod:`deepscope.attribution.backprop_rules`): a unit that is off everywhere on
            the grey start gets no true gradient and would never move. 0: the true gradient throughout.

    Example:
        >>> from deepscope.featurevis import objectives as obj  # doctest: +SKIP
        >>> result = feature_vis(model, obj.channel("layer3", 5) - 1e-3 * obj.total_variation())  # doctest: +SKIP
    """
    goal = _objective(model, objective)
    if steps < 1 or lr <= 0 or batch < 1:
        raise ValueError(f"need steps >= 1, lr > 0 and batch >= 1; got steps={steps}, lr={lr}, batch={batch}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    device = model_device(model)
    image = make_param(param, batch, size, g, device, color)
    transform = resolve(transforms)
    modules = resolve_layers(model, sorted(goal.layers - {OUTPUT, IMAGE})) if goal.layers - {OUTPUT, IMAGE} else {}
    optimizer = _adam(image.parameters(), lr)
    values = []
    if redirect:
        check_rules_reach(model, "redirected")  # once, not at each redirected step
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # only the image is optimised: no weight gradient is computed
        for step in track(range(steps), "feature visualisation"):
            images = image()
            x = (transform(images, g) if transform is not None else images).contiguous()  # crops are views
            with relu_rules("redirected") if step < redirect else contextlib.nullcontext():
                captured = _forward(
                    model, modules, preprocess(x) if preprocess is not None else x, OUTPUT in goal.layers
                )
                value = goal({**captured, IMAGE: images})  # (B,)
                grads = torch.autograd.grad(-value.sum(), image.parameters())
            for p, grad in zip(image.parameters(), grads, strict=True):
                p.grad = grad
            optimizer.step()
            values.append(value.detach())
        with torch.no_grad():
            final = image().detach().float().cpu()
    params = {
        "size": size, "steps": steps, "lr": lr, "param": param if isinstance(param, str) else type(param).__name__,
        "transforms": transforms if isinstance(transforms, str) or transforms is None else "custom", "batch": batch,
        "redirect": redirect,
    }  # fmt: skip
    return FeatureVis(
        final, torch.stack(values).float().cpu(), goal.description, tuple(labels), params, library_versions()
    )


def feature_vis_grid(
    model: nn.Module,
    layer: LayerSpec,
    channels: Sequence[int] | None = None,
    *,
    unit: Literal["channel", "neuron"] = "channel",
    per_batch: int = 16,
    **kwargs: Any,
) -> FeatureVis:
    """One image per channel of ``layer`` (a channel atlas), optimised ``per_batch`` channels at a time.

    ``unit="channel"`` maximises a channel's mean over positions, ``"neuron"`` its centre position.
    ``layer=OUTPUT`` (:data:`~deepscope.featurevis.objectives.OUTPUT`) gives one image per class logit.
    ``kwargs`` go to :func:`feature_vis` (``size``, ``steps``, ``generator``…). Default channels: the first 16.
    """
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(map(repr, _UNITS))}")
    if layer == OUTPUT and unit != "channel":
        raise ValueError(f"unit={unit!r} needs a layer with positions; the model output (class logits) has none")
    name = OUTPUT if layer == OUTPUT else resolve_layer(model, layer)[0]
    chosen = list(range(16)) if channels is None else [int(c) for c in channels]
    if not chosen or per_batch < 1:
        raise ValueError(f"need at least one channel and per_batch >= 1; got {chosen} and {per_batch}")
    if name == OUTPUT:
        goal, what, description = class_logit, "class", "classes of the model output"
    else:
        goal, what, description = partial(_UNITS[unit], name), unit, f"{unit}s of {name}"
    results = [
        feature_vis(model, goal(part), batch=len(part), **kwargs)
        for part in (chosen[start : start + per_batch] for start in range(0, len(chosen), per_batch))
    ]
    params = {**results[0].params, "batch": per_batch, "layer": name, "channels": chosen, "unit": what}
    return FeatureVis(
        torch.cat([r.images for r in results]), torch.cat([r.curve for r in results], 1), description,
        tuple(f"{what} {c}" for c in chosen), params, results[0].versions,
    )  # fmt: skip


_UNITS = {"channel": channel, "neuron": neuron}


def _adam(parameters: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch supports it for the parameters' device (CPU: torch >= 2.4)."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(parameters, lr=lr)


def _objective(model: nn.Module, objective: Objective | str) -> Objective:
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, str) and ":" in objective:
        name, _, index = objective.rpartition(":")
        if index.isdigit():
            resolve_layer(model, name)  # an unknown layer fails here, with close matches
            return channel(name, int(index))
    raise ValueError(f"objective must be an Objective or 'layer:channel' (e.g. 'layer3:5'), got {objective!r}")


def _forward(model: nn.Module, modules: dict[str, nn.Module], x: Tensor, need_output: bool) -> dict[str, Tensor]:
    """The objective's layers' outputs (and the model output when needed), stopping early when it is not."""
    if not need_output:
        return forward_until(model, modules, x)
    with HookSet() as hooks:
        captured = hooks.capture_outputs(modules)
        output = model(x)
    return {**captured, OUTPUT: getattr(output, "logits", output)}
