"""DeconvNet projections (Zeiler & Fergus 2014): what in the input made one unit of a layer fire.

The projection of a unit keeps that single activation (every other activation of the layer set to
zero) and maps it back to the input: through max-pooling by the *switches* recorded on the way up
(the signal goes to the argmax of each window), through each ReLU by rectifying the signal, and
through each convolution by its transposed filters. That is the input gradient of the unit under
the DeconvNet ReLU rule, so deepscope computes it with the attribution engine's backward rules
(:func:`deepscope.attribution.backprop_rules.relu_rules`) instead of a second implementation:
autograd's max-pool backward *is* unpooling with switches, and a convolution's backward is the
transposed convolution.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    >>> x = torch.rand(2, 1, 8, 8)
    >>> deconv_project(net, x, "2").shape  # the strongest unit of each image, projected
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepscope._forward import forward_until
from deepscope.attribution.backprop_rules import relu_rules
from deepscope.guard import preserved
from deepscope.layers import LayerSpec, model_device, resolve_layer

__all__ = ["deconv_project", "strongest_units"]


def strongest_units(activations: Tensor, channels: Tensor | None = None) -> Tensor:
    """``(N, 3)`` channel, row, column of each image's strongest unit (in ``channels[n]`` when given)."""
    if activations.ndim != 4:
        raise ValueError(f"units are placed on spatial maps (N, C, H, W), got {tuple(activations.shape)}")
    n, _, h, w = activations.shape
    if channels is None:
        flat = activations.reshape(n, -1).argmax(1)  # over channels and positions
        channel = flat // (h * w)
        position = flat % (h * w)
    else:
        channel = channels.to(activations.device).long()
        position = activations[torch.arange(n, device=activations.device), channel].reshape(n, -1).argmax(1)
    return torch.stack([channel, position // w, position % w], 1)


def deconv_project(
    model: nn.Module,
    inputs: Tensor,
    layer: LayerSpec,
    units: Tensor | None = None,
    *,
    batch_size: int = 64,
) -> Tensor:
    """Project one unit of ``layer`` per input back to the input space with the DeconvNet rules.

    Args:
        model: the network (left unchanged: eval mode inside, every flag and hook restored).
        inputs: ``(N, C, H, W)`` images.
        layer: a layer with a spatial output ``(N, C', H', W')``.
        units: ``(N, 3)`` channel, row, column of the unit to project for each image; default: each
            image's strongest unit.
        batch_size: images per backward pass.

    Returns:
        ``(N, C, H, W)`` projections, in input units (signed; display them with a per-image scale).
    """
    if not isinstance(inputs, Tensor) or inputs.ndim != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got {getattr(inputs, 'shape', type(inputs).__name__)}")
    name, module = resolve_layer(model, layer)
    device = model_device(model)
    projections = []
    with preserved(model, inputs):
        model.eval()
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size].detach().to(device).requires_grad_(True)
            chosen = None if units is None else units[start : start + batch_size]
            projections.append(_project_batch(model, name, module, x, chosen))
    return torch.cat(projections)


def _project_batch(model: nn.Module, name: str, module: nn.Module, x: Tensor, units: Tensor | None) -> Tensor:
    with torch.enable_grad(), relu_rules("deconvnet", model):
        activations = forward_until(model, {name: module}, x)[name]
        seed = _one_hot_seed(activations.detach(), units)
        (projection,) = torch.autograd.grad(activations, x, grad_outputs=seed)
    return projection.detach()


def _one_hot_seed(activations: Tensor, units: Tensor | None) -> Tensor:
    """A zero tensor like ``activations`` holding, per image, only the chosen unit's own value (the DeconvNet start)."""
    if activations.ndim != 4:
        raise ValueError(
            f"DeconvNet projects units of spatial maps (N, C, H, W); this layer gives {tuple(activations.shape)}"
        )
    chosen = strongest_units(activations) if units is None else units.to(activations.device).long()
    if chosen.shape != (activations.shape[0], 3):
        raise ValueError(f"units must be (N, 3) channel, row, column per image, got {tuple(chosen.shape)}")
    index = torch.arange(activations.shape[0], device=activations.device)
    seed = torch.zeros_like(activations)
    value = activations[index, chosen[:, 0], chosen[:, 1], chosen[:, 2]]
    seed[index, chosen[:, 0], chosen[:, 1], chosen[:, 2]] = value
    return seed
