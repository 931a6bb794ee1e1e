"""Recorder overhead against a plain loop and TensorBoard histograms, in one process on the same inputs.

Run: python bench/bench_recorder.py [--steps 200] [--repeats 3]

The issue's setting: 4 × Conv3×3 (3-32-64-128-128, strides 1/2/2/2) + ReLU, global average pool,
Linear(128, 10), SGD momentum 0.9, batches of 64 images 3 × 32 × 32, 200 steps. Variants (they
take turns, ``--repeats`` times, so machine noise is shared; the best repeat is kept):

- plain: the loop alone;
- deepscope, default every 10: scalars every step, layer health of every 10th training step (8
  layers: 4 convs, 4 ReLUs, the linear head) and a probe snapshot (256 images, 2 layers);
- deepscope, health only every 10 / every 1;
- deepscope, everything every step;
- TensorBoard: ``add_histogram`` of every parameter and its gradient every 10 steps / every step
  (what users do today to watch layers), when ``tensorboard`` is installed.

Prints the mean step time (first 10 steps excluded) and its ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deepscope import Recorder


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((3, 32, 1), (32, 64, 2), (64, 128, 2), (128, 128, 2)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


Hook = Callable[[int], None]


def _deepscope(model: nn.Module, run_dir: Path, probe, *, every: int, health: bool, snapshots: bool) -> Recorder:
    kwargs = {"probe": probe, "layers": ["5", "10"]} if snapshots else {}
    return Recorder(model, run_dir, every=every, health=health, **kwargs)


def run(variant: str, steps: int, data, probe, tmp: Path) -> float:
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs, ys = data
    rec: Recorder | None = None
    tensorboard = None
    tb_every = 0
    if variant == "deepscope, default every 10":
        rec = _deepscope(model, tmp / variant, probe, every=10, health=True, snapshots=True)
    elif variant == "deepscope, health every 10":
        rec = _deepscope(model, tmp / variant, probe, every=10, health=True, snapshots=False)
    elif variant == "deepscope, health every step":
        rec = _deepscope(model, tmp / variant, probe, every=1, health=True, snapshots=False)
    elif variant == "deepscope, all every step":
        rec = _deepscope(model, tmp / variant, probe, every=1, health=True, snapshots=True)
    elif variant.startswith("tensorboard histograms every "):
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(str(tmp / variant.replace(" ", "_")))
        tb_every = int(variant.rsplit(" ", 1)[1])
    elif variant != "plain":
        raise ValueError(variant)
    if rec is not None:
        rec.open()
    times = []
    for i in range(steps):
        x, y = xs[i % len(xs)], ys[i % len(ys)]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss)
        if tensorboard is not None:
            tensorboard.add_scalar("loss", loss.item(), i)
            if (i + 1) % tb_every == 0:
                for name, param in model.named_parameters():
                    tensorboard.add_histogram(name, param, i)
                    tensorboard.add_histogram(f"{name}.grad", param.grad, i)
        times.append(time.perf_counter() - start)
    if rec is not None:
        rec.close()
    if tensorboard is not None:
        tensorboard.close()
    return statistics.mean(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated substrings: run the variants that contain one (and plain)")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = (
        [torch.randn(64, 3, 32, 32, generator=g) for _ in range(8)],
        [torch.randint(0, 10, (64,), generator=g) for _ in range(8)],
    )
    probe = (torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g))
    variants = [
        "plain",
        "deepscope, default every 10",
        "deepscope, health every 10",
        "deepscope, health every step",
        "deepscope, all every step",
    ]
    try:
        import tensorboard  # noqa: F401

        variants += ["tensorboard histograms every 10", "tensorboard histograms every 1"]
    except ImportError:
        print("(tensorboard is not installed: its rows are skipped)")
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        variants = [v for v in variants if v == "plain" or any(w in v for w in wanted)]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # take turns, so machine noise is shared
            for variant in variants:
                results.setdefault(variant, []).append(run(variant, args.steps, data, probe, Path(tmp) / str(repeat)))
    base = min(results["plain"])
    print(
        f"recorder overhead: 4-conv CNN, SGD momentum, batch 64 of 3x32x32, {args.steps} steps, "
        f"{torch.get_num_threads()} threads; mean step time, best of {args.repeats}"
    )
    for variant in variants:
        best = min(results[variant])
        print(f"  {variant:<34} {best * 1e3:7.2f} ms/step   ratio {best / base:5.3f}x")


if __name__ == "__main__":
    main()
