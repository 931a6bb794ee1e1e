"""The CAM family: class activation maps that weight a layer's feature maps.

Every method is one small class on top of :class:`_CAMBase`, which owns the pipeline:

1. activations ``A`` and gradients ``g = ∂y_c/∂A`` of each chosen layer, from
   :func:`~deepscope.attribution._autograd.layer_acts_and_grads` at the cost of about one forward
   pass (the trunk runs without a graph);
2. token outputs ``(N, 1+HW, C)`` or ``(N, HW, C)`` turned into ``(N, C, H, W)`` grids when ``HW``
   is a perfect square (a leading class token is dropped); otherwise ``reshape=`` is required;
3. the method's part: ``channel_weights(acts, grads, ctx) -> (N, C)`` combined as
   ``Σ_k w_k A^k``, or ``combine(acts, grads, ctx) -> (N, h, w)`` for element-wise methods;
4. a ReLU where the paper has one (every method here except CAM, whose map is signed);
5. bilinear upsampling to the input size (``align_corners=False``; ``upsample=False`` keeps the
   layer's resolution);
6. with several layers, fusion by the element-wise maximum of the per-layer maps after
   upsampling (the fusion of Layer-CAM, without its tanh rescaling of shallow layers); the
   per-layer maps are returned in ``extras["layer_maps"]``.

Maps are raw (not min-max normalised); normalisation for display is explicit, through
:meth:`AttributionMap.normalized`. The class explained is fixed by the prediction on the
unmodified input, also for the masked forward passes of Score-CAM.

Choosing the layer: by default :func:`explain` takes the last layer with a spatial output
(``layer4`` of a ResNet, ``features`` of a VGG, MobileNet or DenseNet). For a vision transformer,
pick the normalisation at the start of the last block (torchvision ViT:
``"encoder.layers.encoder_layer_11.ln_1"``): the output of the last block reaches the classifier
only through the class token, so its gradient on the patch tokens is zero.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope.attribution._autograd import forward_scores, layer_acts_and_grads
from deepscope.attribution.base import ATTRIBUTIONS, Attribution, Context, MethodOutput
from deepscope.layers import is_layer
from deepscope.targets import ClassTarget, PredictedClass, Target

__all__ = ["CAM", "GradCAM", "GradCAMpp", "GuidedGradCAM", "LayerCAM", "ScoreCAM", "XGradCAM"]


@dataclass(frozen=True)
class _CAMBase(Attribution):
    """The CAM pipeline (see the module docstring); subclasses implement one weighting step.

    Args:
        upsample: upsample the maps bilinearly to the input size (default); ``False`` returns
            them at the layer's resolution (with several layers, at the finest one's).
    """

    needs_layer: ClassVar[bool] = True
    multi_layer: ClassVar[bool] = True
    rectify: ClassVar[bool] = True  # ReLU on the combined map, as in the papers (CAM has none)

    upsample: bool = True

    def compute(self, ctx: Context) -> MethodOutput:
        if ctx.inputs.ndim != 4:
            raise ValueError(
                "CAM methods explain image batches (N, C, H, W): the map is upsampled to the input's height and "
                f"width; got inputs of shape {tuple(ctx.inputs.shape)}"
            )
        data = layer_acts_and_grads(ctx.model, list(ctx.layers.values()), ctx.inputs, ctx.target, reshape=ctx.reshape)
        ctx = _fix_predicted_class(ctx, data.output)
        layer_maps: dict[str, Tensor] = {}
        for name, acts, grads in zip(ctx.layers, data.acts, data.grads, strict=True):
            acts = _spatial(acts, name, user_reshape=ctx.reshape is not None)  # (N, C, h, w)
            grads = _spatial(grads, name, user_reshape=ctx.reshape is not None)  # (N, C, h, w)
            cam = self.combine(acts, grads, ctx)  # (N, h, w)
            layer_maps[name] = cam.relu() if self.rectify else cam
        size = (
            tuple(ctx.inputs.shape[-2:])
            if self.upsample
            else max((tuple(m.shape[-2:]) for m in layer_maps.values()), key=lambda hw: hw[0] * hw[1])
        )
        resized = {name: _resize(cam, size) for name, cam in layer_maps.items()}  # each (N, H, W)
        maps = next(iter(resized.values())) if len(resized) == 1 else torch.stack(list(resized.values())).amax(0)
        extras = {"layer_maps": resized} if len(resized) > 1 else {}
        return MethodOutput(maps=maps, scores=data.scores, output=data.output, extras=extras)

    def combine(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        """The layer's map before the ReLU, ``(N, h, w)``: by default ``Σ_k w_k A^k`` with :meth:`channel_weights`."""
        weights = self.channel_weights(acts, grads, ctx)  # (N, C)
        return torch.einsum("nc,nchw->nhw", weights.to(acts.dtype), acts)

    def channel_weights(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        """One weight per sample and channel, ``(N, C)``, from ``acts`` and ``grads`` ``(N, C, h, w)``.

        ``ctx`` gives the model and inputs to the methods that need them (CAM's classifier,
        Score-CAM's masked forward passes).
        """
        raise NotImplementedError


@ATTRIBUTIONS.register("cam")
@dataclass(frozen=True)
class CAM(_CAMBase):
    """Class Activation Mapping (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization").

    For a network ending in global average pooling of the layer and one linear classifier,
    ``y_c = Σ_k w_ck · mean_ij A^k_ij + b_c``, the map is ``M_c = Σ_k w_ck A^k`` with ``w_ck`` the
    classifier's row for class ``c``. It is signed (no ReLU), in logit units per position.

    The rows are taken from the model's ``nn.Linear`` whose rows match the gradient: on such a
    head ``∂y_c/∂A^k_ij = w_ck / (h·w)`` at every position, which identifies the classifier and
    checks that the layer feeds it through global average pooling. Any other head (an MLP, a
    ReLU after the layer as in DenseNet's ``features``) raises ``ValueError``; use ``gradcam``,
    which equals ``ReLU(CAM) / (h·w)`` on GAP + linear heads and applies to any network.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(resnet, images, "cam", layer="layer4").maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    rectify: ClassVar[bool] = False

    def channel_weights(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        channels = acts.shape[1]
        grads = grads.float()
        estimate = grads.sum(dim=(2, 3))  # (N, C): h·w · mean_ij ∂y_c/∂A = w_c on a GAP + linear head
        spread = (grads - grads.mean(dim=(2, 3), keepdim=True)).abs().amax()
        if spread <= 1e-4 * grads.abs().amax():  # the gradient is constant over positions, as after GAP
            heads = [m for m in ctx.model.modules() if is_layer(m, nn.Linear) and m.weight.shape[1] == channels]
            scale = estimate.norm(dim=1).clamp_min(torch.finfo(estimate.dtype).tiny)  # (N,)
            for head in reversed(heads):
                rows = head.weight.detach().float()  # (K, C)
                distance, index = torch.cdist(estimate, rows).min(dim=1)  # (N,)
                if bool((distance <= 1e-3 * scale).all()):
                    return rows[index]  # (N, C)
        raise ValueError(
            "cam (Zhou et al. 2016) needs a layer that feeds global average pooling and one linear classifier "
            "(e.g. a ResNet's layer4 -> avgpool -> fc), and a target that is one class's logit; the target's gradient "
            "at this layer is not that of such a head. Use method='gradcam', which equals ReLU(CAM) up to a constant "
            "on GAP + linear models and works on any architecture."
        )


@ATTRIBUTIONS.register("gradcam")
@dataclass(frozen=True)
class GradCAM(_CAMBase):
    """Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks").

    ``L_c = ReLU(Σ_k α_k A^k)`` with ``α_k = mean_ij ∂y_c/∂A^k_ij`` (``y_c`` the pre-softmax score).
    On a global-average-pooling + linear head, Grad-CAM equals ``ReLU(CAM) / (h·w)``.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "gradcam", target=281).maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    def channel_weights(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        return grads.mean(dim=(2, 3))  # (N, C)


@ATTRIBUTIONS.register("gradcam_pp")
@dataclass(frozen=True)
class GradCAMpp(_CAMBase):
    """Grad-CAM++ (Chattopadhay et al. 2018, "Grad-CAM++: Generalized Gradient-Based Visual Explanations").

    ``L_c = ReLU(Σ_k w_k A^k)`` with ``w_k = Σ_ij α^k_ij ReLU(g^k_ij)``, ``g = ∂y_c/∂A``, and the
    paper's closed form (its Eq. 19, exponential-score assumption)::

        α^k_ij = g_ij² / (2 g_ij² + Σ_ab A^k_ab · g_ij³),   0 where g_ij = 0

    computed as ``1 / (2 + Σ_ab A^k_ab · g_ij)`` for ``g_ij ≠ 0``, so small gradients do not
    underflow (pytorch-grad-cam adds ``1e-6`` to the denominator instead, which shrinks α when
    ``g² ≲ 1e-6``). Like the weights of Grad-CAM++, the map is not invariant to rescaling the
    score. The ReLU on the map follows Grad-CAM and the reference implementations.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "gradcam_pp").maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    def channel_weights(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        totals = acts.sum(dim=(2, 3), keepdim=True)  # (N, C, 1, 1): Σ_ab A^k_ab
        denominator = 2 + totals * grads  # (N, C, h, w): (2g² + Σ A g³) / g²
        alpha = torch.where((grads != 0) & (denominator != 0), 1 / denominator, torch.zeros_like(grads))
        return (alpha * grads.relu()).sum(dim=(2, 3))  # (N, C)


@ATTRIBUTIONS.register("xgradcam")
@dataclass(frozen=True)
class XGradCAM(_CAMBase):
    """XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs").

    ``L_c = ReLU(Σ_k w_k A^k)`` with ``w_k = Σ_ij (A^k_ij / Σ_ab A^k_ab) · ∂y_c/∂A^k_ij``: the
    gradient averaged with the activation as weights. A channel whose activations sum to 0 gets
    weight 0 (the references add a small epsilon instead).

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "xgradcam").maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    def channel_weights(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        totals = acts.sum(dim=(2, 3))  # (N, C)
        weighted = (acts * grads).sum(dim=(2, 3))  # (N, C)
        return torch.where(totals != 0, weighted / totals, torch.zeros_like(totals))


@ATTRIBUTIONS.register("layercam")
@dataclass(frozen=True)
class LayerCAM(_CAMBase):
    """Layer-CAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization").

    Element-wise weights: ``L_c = ReLU(Σ_k ReLU(∂y_c/∂A^k) ⊙ A^k)``, meaningful at shallow layers
    too. With several layers the maps are fused by their element-wise maximum after upsampling.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(resnet, images, "layercam", layer=["layer3", "layer4"]).maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    def combine(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        return (grads.relu() * acts).sum(dim=1)  # (N, h, w)


ScoreWeighting = Literal["probability", "channel_softmax"]


@ATTRIBUTIONS.register("scorecam")
@dataclass(frozen=True)
class ScoreCAM(_CAMBase):
    """Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs"), gradient-free.

    Each channel ``A^k`` is upsampled bilinearly to the input size and min-max normalised to a
    mask ``H^k`` in [0, 1]; the masked input ``X ⊙ H^k`` goes through the model, and its score
    weights the channel: ``L_c = ReLU(Σ_k w_k A^k)``.

    Variant (``score``):
        ``"probability"`` (default): ``w_k = softmax(f(X ⊙ H^k))_c``, the target class's
        post-softmax probability for the masked input (a sigmoid for a single-logit output): the
        paper's post-softmax scores, computed as the authors' released code does, with no
        baseline subtracted.
        ``"channel_softmax"``: ``w = softmax_k(y_c(X ⊙ H^k))``, a softmax of the target logits over
        channels, the formula pytorch-grad-cam and torchcam implement (torchcam writes it
        ``softmax_k(y_c(M_k) − y_c(X_b))``; the baseline term cancels in the softmax).
    Masks are built like the authors' code: upsampling with ``align_corners=False``, then min-max
    normalisation. pytorch-grad-cam upsamples with ``align_corners=True`` and torchcam normalises
    before upsampling, so their maps differ slightly from both variants. Channels that are
    constant (no spatial information, e.g. dead ReLU channels) get weight 0 and are not forwarded,
    as in the authors' code.

    The masked inputs run under ``torch.inference_mode()`` in batches of ``batch_size``.

    Args:
        batch_size: masked inputs per forward pass.
        top_k: score only the ``top_k`` channels of largest mean activation per sample (the
            others get weight 0): ``N·top_k`` forward passes instead of ``N·C``.
        score: ``"probability"`` or ``"channel_softmax"`` (see above).

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "scorecam", top_k=64, batch_size=64).maps.shape  # doctest: +SKIP
        torch.Size([8, 224, 224])
    """

    batch_size: int = 32
    top_k: int | None = None
    score: ScoreWeighting = "probability"

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be None or a positive int, got {self.top_k!r}")
        if self.score not in ("probability", "channel_softmax"):
            raise ValueError(f"score must be 'probability' or 'channel_softmax', got {self.score!r}")

    def channel_weights(self, acts: Tensor, grads: Tensor, ctx: Context) -> Tensor:
        n, c = acts.shape[:2]
        flat = acts.flatten(2)  # (N, C, h*w)
        informative = flat.amax(dim=2) > flat.amin(dim=2)  # (N, C): constant channels carry no mask
        if self.top_k is not None and self.top_k < c:
            chosen = torch.zeros_like(informative)
            chosen.scatter_(1, flat.mean(dim=2).topk(self.top_k, dim=1).indices, True)
            informative &= chosen
        samples, channels = informative.nonzero(as_tuple=True)  # (M,) each: the (sample, channel) pairs to score
        scores = acts.new_empty(samples.shape[0], dtype=torch.float32)  # (M,)
        size = tuple(ctx.inputs.shape[-2:])
        for start in range(0, samples.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            with torch.inference_mode():
                masks = _resize(acts[samples[rows], channels[rows]], size)  # (B, H, W)
                lows = masks.flatten(1).amin(dim=1)[:, None, None]  # (B, 1, 1)
                highs = masks.flatten(1).amax(dim=1)[:, None, None]  # (B, 1, 1)
                masks = (masks - lows) / (highs - lows).clamp_min(torch.finfo(masks.dtype).tiny)
                masked = ctx.inputs[samples[rows]] * masks[:, None]  # (B, C_in, H, W)
            target = _rows_target(ctx.target, samples[rows])
            if self.score == "probability":
                target = _on_probabilities(target)
            scores[rows] = forward_scores(ctx.model, masked, target)[0].float()
        if self.score == "probability":
            weights = acts.new_zeros(n, c, dtype=torch.float32)  # (N, C)
            weights[samples, channels] = scores
            return weights
        logits = acts.new_full((n, c), -math.inf, dtype=torch.float32)  # (N, C); unscored channels -> weight 0
        logits[samples, channels] = scores
        return torch.softmax(logits, dim=1).nan_to_num(0.0)  # a sample with no scored channel: all 0


@ATTRIBUTIONS.register("guided_gradcam")
@dataclass(frozen=True)
class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop ⊙ the upsampled Grad-CAM map.

    High-resolution and class-discriminative: the per-channel Guided Backprop map
    (Springenberg et al. 2015, method ``guided_backprop``) multiplied at every pixel by the
    Grad-CAM map upsampled to the input size. Returns the Guided Backprop map's shape,
    ``(N, C, H, W)``. ``upsample`` must stay ``True``.

    Example:
        >>> import deepscope as ds  # doctest: +SKIP
        >>> ds.explain(model, images, "guided_gradcam").maps.shape  # doctest: +SKIP
        torch.Size([8, 3, 224, 224])
    """

    def __post_init__(self) -> None:
        if not self.upsample:
            raise ValueError("guided_gradcam multiplies the map with an input-resolution one; upsample must be True")

    def compute(self, ctx: Context) -> MethodOutput:
        cam = super().compute(ctx)
        guided = ATTRIBUTIONS.get("guided_backprop")().compute(dataclasses.replace(ctx, layers={}))
        weights = cam.maps[:, None] if guided.maps.ndim == 4 else cam.maps  # (N, 1, H, W) or (N, H, W)
        return MethodOutput(maps=guided.maps * weights, scores=cam.scores, output=cam.output, extras=cam.extras)


# --------------------------------------------------------------------------- helpers


def _resize(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize of ``(B, h, w)`` maps to ``size`` (``align_corners=False``); a no-op at that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)


def _spatial(tensor: Tensor, layer: str, *, user_reshape: bool) -> Tensor:
    """A layer's output as ``(N, C, h, w)``; token sequences ``(N, [1+]HW, C)`` become square grids."""
    shape = tuple(tensor.shape)
    if tensor.ndim == 4:
        return tensor
    if user_reshape:
        raise ValueError(f"reshape= must map layer {layer!r}'s output to (N, C, H, W); it returned shape {shape}")
    if tensor.ndim == 3:
        n, tokens, channels = shape
        for skip in (0, 1):  # all tokens are patches, or a leading class token
            side = math.isqrt(tokens - skip)
            if side > 0 and side * side == tokens - skip:
                grid = tensor[:, skip:]  # (N, side*side, C)
                return grid.transpose(1, 2).reshape(n, channels, side, side)  # (N, C, side, side)
        raise ValueError(
            f"layer {layer!r} outputs tokens of shape {shape}: {tokens} tokens (with or without a leading class "
            "token) do not form a square grid; pass reshape= mapping the output to (N, C, H, W), e.g. "
            "reshape=lambda t: t[:, 2:].transpose(1, 2).reshape(t.shape[0], -1, 14, 14)"
        )
    raise ValueError(
        f"layer {layer!r} outputs shape {shape}, which has no spatial dimensions; CAM methods weight spatial "
        "feature maps (N, C, H, W): pick a convolutional layer before global pooling (e.g. a ResNet's 'layer4', "
        "see deepscope.list_layers(model, inputs)), or pass reshape= for other layouts"
    )


def _fix_predicted_class(ctx: Context, output: Tensor) -> Context:
    """Replace a predicted-class target by the classes predicted on the unmodified input."""
    if not isinstance(ctx.target, PredictedClass):
        return ctx
    indices = output.flatten(1).argmax(dim=1) if output.ndim > 1 else torch.zeros_like(output, dtype=torch.long)
    return dataclasses.replace(ctx, target=ClassTarget(indices.tolist()))


def _rows_target(target: Target, samples: Tensor) -> Target:
    """The target for a batch whose row ``r`` derives from input sample ``samples[r]``."""
    if isinstance(target, ClassTarget) and not isinstance(target.indices, int):
        indices = torch.as_tensor(target.indices)[samples.cpu()]  # (B,)
        return ClassTarget(indices.tolist())
    return target  # one class for every sample, or a callable that scores rows independently


def _on_probabilities(target: Target) -> Target:
    """``target`` applied to class probabilities: softmax over classes, sigmoid for a single logit."""

    def score(output: object) -> Tensor:
        logits = output if isinstance(output, Tensor) else getattr(output, "logits", None)
        if not isinstance(logits, Tensor) or logits.ndim not in (1, 2):
            raise ValueError(
                "scorecam's score='probability' needs class logits (N, K) from the model; use "
                "score='channel_softmax' for other outputs"
            )
        single = logits.ndim == 1 or logits.shape[1] == 1
        return target(torch.sigmoid(logits) if single else torch.softmax(logits, dim=1))

    return score
