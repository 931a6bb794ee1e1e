"""Recorder overhead on a small CNN: step time with and without deepscope, in one process on the same inputs.

Run: python bench/bench_recorder.py [--steps 300]
Prints the median step time of each variant and its ratio to the plain loop.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from deepscope import Recorder


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def run(variant: str, steps: int, data, probe, tmp: Path) -> float:
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xs, ys = data
    times = []
    if variant == "plain":
        rec = None
    elif variant == "scalars every step":
        rec = Recorder(model, tmp / variant, every=10**9)
    elif variant.startswith("probe every "):
        every = int(variant.rsplit(" ", 1)[1])
        rec = Recorder(model, tmp / variant, probe=probe, layers=["4", "8"], every=every)
    else:
        raise ValueError(variant)
    if rec:
        rec.open()
    for i in range(steps):
        x, y = xs[i % len(xs)], ys[i % len(ys)]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec:
            rec.step(loss=loss)
        times.append(time.perf_counter() - start)
    if rec:
        rec.close()
    return statistics.mean(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = (
        [torch.randn(64, 3, 32, 32, generator=g) for _ in range(8)],
        [torch.randint(0, 10, (64,), generator=g) for _ in range(8)],
    )
    probe = (torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g))
    variants = ["plain", "scalars every step", "probe every 10", "probe every 50"]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for repeat in range(2):  # interleave to share machine noise
            for v in variants:
                results.setdefault(v, []).append(run(v, args.steps, data, probe, Path(tmp) / f"{repeat}"))
    base = min(results["plain"])
    print(
        f"recorder overhead, small CNN, batch 64, {args.steps} steps, probe of 256 images and 2 layers, "
        "mean step time (best of 2)"
    )
    for v in variants:
        t = min(results[v])
        print(f"  {v:<22} {t * 1e3:7.2f} ms/step   ratio {t / base:5.3f}x")


if __name__ == "__main__":
    main()
