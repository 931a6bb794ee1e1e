"""Feature visualisation per optimisation step: deepscope against its floor and torch-lucent, in one process.

Run: python bench/bench_featurevis.py [--steps 16] [--repeats 5] [--fixed-floor] [--device cuda]

Setting (the issue's): torchvision resnet18 with random weights (eval mode), objective channel 5 of
``layer3``, 128 px Fourier image in decorrelated colour, the standard transforms (pad 12, jitter 8,
scale, rotate, jitter 4), 2 CPU threads. Timed per step, each variant ``steps`` steps per call,
variants interleaved in a random order on each repeat; the median over the repeats of each repeat's
ratio to the floor (range), and the ratio of the best times (robust to a shared machine's slowdowns):

- floor: one forward pass as far as ``layer3`` and one backward pass to the input, on a random image
  of the transformed size (the least any method must compute per step). The random scale makes that
  size change from step to step (126 to 154 px), and a convolution's cost is not proportional to the
  area (oneDNN is fastest at some sizes; PyTorch's slow path takes ``layer3``'s 8 x 8 maps), so the
  floor replays the very sizes deepscope's generator draws, step for step. ``--fixed-floor`` also
  times the floor at the nominal 140 px;
- floor with the full forward: the same through the whole network (what a method that cannot stop
  at the objective's layer pays);
- deepscope ``feature_vis`` (stops at ``layer3``, no weight gradients);
- torch-lucent ``render_vis`` (full forward, ``loss.backward()`` also computes weight gradients),
  and lucent with the parameters frozen by hand;
- what the floor leaves out, the image pipeline (the Fourier parameterisation, the transforms and Adam,
  deepscope's own objects in a bare loop): alone, its backward fed a constant gradient, and in a bare
  loop with the floor's model pass. deepscope's ratio to the floor plus the pipeline alone is what its
  own code (hooks, objective, state guard, progress) and the two sharing the caches add.

The issue's target: deepscope <= 1.05x the floor. ``--device cuda`` runs every variant on the GPU (each
call ends with a synchronisation; torch-lucent picks ``cuda:0`` by itself whenever CUDA is available).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

from deepscope._forward import forward_until
from deepscope.featurevis import feature_vis
from deepscope.featurevis.param import Fourier
from deepscope.featurevis.transforms import STANDARD

SIZE = 128
PIPELINE = "image pipeline alone (Fourier, transforms, Adam)"
NOMINAL = SIZE + 2 * 12 - 8 - 4  # pad 12 on each side, jitter 8 then 4, at scale 1


def transformed_sizes(model: torch.nn.Module, steps: int) -> list[int]:
    """The side of the image deepscope's model sees at each step (the same generator seed as ``deepscope_steps``)."""
    sizes: list[int] = []
    handle = model.conv1.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[-1]))
    deepscope_steps(model, steps)
    handle.remove()
    return sizes


def _requires_grad(model: torch.nn.Module, on: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(on)


def floor(model: torch.nn.Module, sizes: list[int], full: bool) -> None:
    layer3 = {"layer3": model.layer3}
    _requires_grad(model, False)
    device = next(model.parameters()).device
    images = {side: torch.rand(1, 3, side, side, device=device, requires_grad=True) for side in set(sizes)}
    captured: dict[str, torch.Tensor] = {}
    handle = model.layer3.register_forward_hook(lambda _m, _a, out: captured.update(out=out)) if full else None
    for side in sizes:
        x = images[side]
        if full:
            model(x)
            out = captured["out"]
        else:
            out = forward_until(model, layer3, x)["layer3"]
        torch.autograd.grad(out[:, 5].mean(), x)
    if handle is not None:
        handle.remove()
    _requires_grad(model, True)


def deepscope_steps(model: torch.nn.Module, steps: int) -> None:
    feature_vis(model, "layer3:5", size=SIZE, steps=steps, redirect=0, generator=torch.Generator().manual_seed(0))


def pipeline_steps(model: torch.nn.Module, steps: int, with_model: bool) -> None:
    """The image pipeline deepscope's step runs around the floor, in a bare loop; with the model or on its own."""
    _requires_grad(model, False)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    image = Fourier(1, (SIZE, SIZE), generator=generator, device=device)
    optimizer = torch.optim.Adam(image.parameters(), lr=0.05, fused=True)
    layer3 = {"layer3": model.layer3}
    for _ in range(steps):
        x = STANDARD(image(), generator).contiguous()
        if with_model:
            (image.spectrum.grad,) = torch.autograd.grad(
                -forward_until(model, layer3, x)["layer3"][:, 5].mean(), image.spectrum
            )
        else:
            (image.spectrum.grad,) = torch.autograd.grad(x, image.spectrum, torch.full_like(x, 1e-4))
        optimizer.step()
    _requires_grad(model, True)


def lucent_steps(model: torch.nn.Module, steps: int, frozen: bool) -> None:
    from lucent.optvis import param, render, transform

    if frozen:
        _requires_grad(model, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        render.render_vis(
            model, "layer3:5", param_f=lambda: param.image(SIZE, fft=True, decorrelate=True),
            transforms=transform.standard_transforms, thresholds=(steps,), show_image=False, progress=False,
            preprocess=False,
        )  # fmt: skip
    _requires_grad(model, True)
    model.zero_grad(set_to_none=True)


def _synchronised(run: Callable[[], None]) -> Callable[[], None]:
    def timed() -> None:
        run()
        torch.cuda.synchronize()

    return timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fixed-floor", action="store_true", help=f"also time the floor at a fixed {NOMINAL} px")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (2 threads) or cuda")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    sizes = transformed_sizes(model, args.steps)
    variants = {
        "floor: forward to layer3 + backward to the input": lambda: floor(model, sizes, full=False),
        "floor with the full forward": lambda: floor(model, sizes, full=True),
        "deepscope feature_vis": lambda: deepscope_steps(model, args.steps),
        "torch-lucent render_vis": lambda: lucent_steps(model, args.steps, frozen=False),
        "torch-lucent, parameters frozen by hand": lambda: lucent_steps(model, args.steps, frozen=True),
        PIPELINE: lambda: pipeline_steps(model, args.steps, with_model=False),
        "image pipeline + the floor, in a bare loop": lambda: pipeline_steps(model, args.steps, with_model=True),
    }
    if args.fixed_floor:
        variants[f"floor at a fixed {NOMINAL} px"] = lambda: floor(model, [NOMINAL] * args.steps, full=False)
    if device.type == "cuda":  # time the work, not its launch
        variants = {name: _synchronised(run) for name, run in variants.items()}
    for run in variants.values():  # warm-up: kernels, allocator, lucent's imports
        run()
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    order = random.Random(0)
    for _ in range(args.repeats):
        for name in order.sample(list(variants), len(variants)):
            start = time.perf_counter()
            variants[name]()
            per_step[name].append((time.perf_counter() - start) / args.steps)
    reference = "floor: forward to layer3 + backward to the input"
    print(
        f"feature visualisation: resnet18 (random weights), channel 5 of layer3, {SIZE} px Fourier + decorrelated, "
        f"standard transforms ({min(sizes)}-{max(sizes)} px), "
        f"{device if device.type != 'cpu' else f'{torch.get_num_threads()} CPU threads'}; {args.steps} steps "
        f"per call, median of "
        f"{args.repeats}; ratio = time per step / the floor's"
    )
    for name, times in per_step.items():
        ratios = [t / f for t, f in zip(times, per_step[reference], strict=True)]
        best = min(times) / min(per_step[reference])
        print(
            f"  {name:<50} {1e3 * statistics.median(times):7.1f} ms/step   ratio {statistics.median(ratios):5.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}), best times {best:4.2f}x"
        )
    floor_and_pipeline = [f + p for f, p in zip(per_step[reference], per_step[PIPELINE], strict=True)]
    ratios = [t / total for t, total in zip(per_step["deepscope feature_vis"], floor_and_pipeline, strict=True)]
    print(
        f"  deepscope / (the floor + the image pipeline alone): {statistics.median(ratios):.3f}x "
        f"({min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
