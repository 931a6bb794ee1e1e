"""Recorder overhead against a plain loop and TensorBoard histograms, in one process on the same inputs.

Run: python bench/bench_recorder.py [--steps 200] [--repeats 3]

The issue's setting: 4 × Conv3×3 (3-32-64-128-128, strides 1/2/2/2) + ReLU, global average pool,
Linear(128, 10), SGD momentum 0.9, batches of 64 images 3 × 32 × 32, 200 steps. Each repeat runs
every variant once, in a random order, each right next to its own plain block (in a random order
within the pair), and divides the two mean step times; the median ratio over the repeats is
printed, with its range. (Interleaving the
variants step by step was tried and rejected: the recorders' and TensorBoard's background writer
threads then run during, and are charged to, the other variants' steps.) Variants:

- plain: the loop alone;
- deepscope, default every 10: scalars every step, layer health of every 10th training step (8
  layers: 4 convs, 4 ReLUs, the linear head) and a probe snapshot (256 images, 2 layers);
- deepscope, health every 10 and probe snapshots every 100 (``snapshot_every=100``);
- deepscope, health only every 10 / every 1;
- deepscope, health every step and probe snapshots every 10 (``snapshot_every=10``);
- deepscope, everything every step;
- TensorBoard: ``add_histogram`` of every parameter and its gradient every 10 steps / every step
  (what users do today to watch layers), when ``tensorboard`` is installed.

Prints the mean step time (first 10 steps excluded) and its ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import random
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


def _deepscope(
    model: nn.Module,
    run_dir: Path,
    probe,
    *,
    every: int,
    health: bool,
    snapshots: bool,
    snapshot_every: int | None = None,
) -> Recorder:
    kwargs = {"probe": probe, "layers": ["5", "10"], "snapshot_every": snapshot_every} if snapshots else {}
    return Recorder(model, run_dir, every=every, health=health, **kwargs)


class Trainer:
    """One variant: its own model, optimiser and recorder, advanced one training step at a time."""

    def __init__(self, variant: str, probe, tmp: Path) -> None:
        self.variant = variant
        self.model = make_cnn()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.rec: Recorder | None = None
        self.tensorboard = None
        self.tb_every = 0
        self.times: list[float] = []
        model = self.model
        if variant == "deepscope, default every 10":
            self.rec = _deepscope(model, tmp / variant, probe, every=10, health=True, snapshots=True)
        elif variant == "deepscope, health every 10, snapshots every 100":
            self.rec = _deepscope(
                model, tmp / variant, probe, every=10, health=True, snapshots=True, snapshot_every=100
            )
        elif variant == "deepscope, health every 10":
            self.rec = _deepscope(model, tmp / variant, probe, every=10, health=True, snapshots=False)
        elif variant == "deepscope, health every step":
            self.rec = _deepscope(model, tmp / variant, probe, every=1, health=True, snapshots=False)
        elif variant == "deepscope, health every step, snapshots every 10":
            self.rec = _deepscope(model, tmp / variant, probe, every=1, health=True, snapshots=True, snapshot_every=10)
        elif variant == "deepscope, all every step":
            self.rec = _deepscope(model, tmp / variant, probe, every=1, health=True, snapshots=True)
        elif variant.startswith("tensorboard histograms every "):
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(tmp / variant.replace(" ", "_")))
            self.tb_every = int(variant.rsplit(" ", 1)[1])
        elif variant != "plain":
            raise ValueError(variant)
        if self.rec is not None:
            self.rec.open()

    def step(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.rec is not None:
            self.rec.step(loss=loss)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", loss.item(), i)
            if (i + 1) % self.tb_every == 0:
                for name, param in self.model.named_parameters():
                    self.tensorboard.add_histogram(name, param, i)
                    self.tensorboard.add_histogram(f"{name}.grad", param.grad, i)
        self.times.append(time.perf_counter() - start)

    def close(self) -> float:
        """Close the recorder or writer; return the mean step time (first 10 steps excluded)."""
        if self.rec is not None:
            self.rec.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return statistics.mean(self.times[10:])


def run(variant: str, steps: int, data, probe, tmp: Path) -> float:
    """Train one variant for ``steps`` steps; return its mean step time (first 10 steps excluded)."""
    trainer = Trainer(variant, probe, tmp)
    xs, ys = data
    for i in range(steps):
        trainer.step(i, xs[i % len(xs)], ys[i % len(ys)])
    return trainer.close()


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
        "deepscope, health every 10, snapshots every 100",
        "deepscope, health every 10",
        "deepscope, health every step",
        "deepscope, health every step, snapshots every 10",
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
    ratios: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    order = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in order.sample(variants[1:], len(variants) - 1):
                # a plain block right next to each variant's block, in a random order: the pair shares the
                # machine's slow drifts, which on a shared VM are larger than the effects measured here
                pair = order.sample(["plain", variant], 2)
                means = {v: run(v, args.steps, data, probe, Path(tmp) / f"{repeat}-{variant}") for v in pair}
                times.setdefault(variant, []).append(means[variant])
                times.setdefault("plain", []).append(means["plain"])
                ratios.setdefault(variant, []).append(means[variant] / means["plain"])
    ratios["plain"] = [1.0]
    print(
        f"recorder overhead: 4-conv CNN, SGD momentum, batch 64 of 3x32x32, {args.steps} steps, "
        f"{torch.get_num_threads()} threads; mean step time; ratio to an adjacent plain block, "
        f"median of {args.repeats} pairs (range)"
    )
    for variant in variants:
        ratio = statistics.median(ratios[variant])
        spread = f"{min(ratios[variant]):.3f}-{max(ratios[variant]):.3f}"
        print(
            f"  {variant:<50} {statistics.median(times[variant]) * 1e3:7.2f} ms/step   ratio {ratio:5.3f}x  ({spread})"
        )


if __name__ == "__main__":
    main()
