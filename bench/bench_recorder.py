"""Recorder overhead against a plain loop and TensorBoard histograms, in one process on the same inputs.

Run: python bench/bench_recorder.py [--steps 200] [--repeats 3] [--only SUBSTRING,...]

The issue's setting: 4 × Conv3×3 (3-32-64-128-128, strides 1/2/2/2) + ReLU, global average pool,
Linear(128, 10), SGD momentum 0.9, batches of 64 images 3 × 32 × 32, 200 steps. Each variant runs
next to two plain loops, each with its own model and optimiser, and the three take their training
steps *in turn*, one step each per round in a random order: on a shared VM the machine's speed
drifts by ±20 % within seconds, far more than the effects measured here, and step-by-step
interleaving makes the three see the same drift. A variant's cost is the sum of its step times
(first 10 excluded) plus the CPU time of the background threads it started (the run store's
writer, TensorBoard's event writer), charged to it in full; the printed ratio is that cost over
the two plain loops' mean, the median over the repeats (range in brackets). The last row, the
second plain loop over the first, is the noise floor: identical loops differ by a few per cent
(each model's memory placement), which is why every group is built afresh. Variants:

- plain + probe forward every 10: the loop and a bare ``no_grad`` forward over the 256-image probe
  set every 10 steps — the floor of any probe-set snapshot;
- deepscope, default every 10: ``Recorder(model, run_dir)``: the loss every step, layer health of
  every 10th training step (9 layers: 4 convs, 4 ReLUs, the linear head);
- deepscope, default + probe snapshots every 10: the same with ``probe=`` (256 images) and
  ``layers=`` (2 layers), snapshotted every 10 steps: every probe on;
- deepscope, default + probe snapshots every 100 (``snapshot_every=100``);
- deepscope, health every step (``every=1``), alone and with probe snapshots every 10;
- deepscope, all every step;
- TensorBoard: ``add_histogram`` of every parameter and its gradient every 10 steps / every step
  (what users do today to watch layers), when ``tensorboard`` is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from deepscope import Recorder

WARMUP = 10  # steps excluded from the means


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((3, 32, 1), (32, 64, 2), (64, 128, 2), (128, 128, 2)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


CONTROLS = ("plain", "plain, second control: its ratio to the first is the noise floor")
# variant -> Recorder keyword arguments (None: no Recorder)
RECORDERS: dict[str, dict | None] = {
    **dict.fromkeys(CONTROLS),
    "plain + probe forward every 10": None,
    "deepscope, default every 10": {},
    "deepscope, default + probe snapshots every 10": {"snapshots": True},
    "deepscope, default + probe snapshots every 100": {"snapshots": True, "snapshot_every": 100},
    "deepscope, health every step": {"every": 1},
    "deepscope, health every step + snapshots every 10": {"every": 1, "snapshots": True, "snapshot_every": 10},
    "deepscope, all every step": {"every": 1, "snapshots": True},
}


def _thread_cpu(threads: list[threading.Thread]) -> float:
    """CPU seconds used so far by ``threads`` (0 for those that have ended or cannot be read)."""
    total = 0.0
    for thread in threads:
        with contextlib.suppress(OSError, TypeError, AttributeError):
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # type: ignore[arg-type]
    return total


class Trainer:
    """One variant: its own model, optimiser and recorder (or TensorBoard writer), one step at a time."""

    def __init__(self, variant: str, probe: tuple[torch.Tensor, torch.Tensor], tmp: Path) -> None:
        before = set(threading.enumerate())
        self.variant = variant
        self.model = make_cnn()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.rec: Recorder | None = None
        self.tensorboard = None
        self.tb_every = 0
        self.probe_inputs = probe[0] if variant == "plain + probe forward every 10" else None
        self.times: list[float] = []
        self.recorder_times: list[float] = []
        if variant.startswith("tensorboard histograms every "):
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(tmp / variant.replace(" ", "_")))
            self.tb_every = int(variant.rsplit(" ", 1)[1])
        elif RECORDERS[variant] is not None:
            kwargs = dict(RECORDERS[variant])
            if kwargs.pop("snapshots", False):
                kwargs.update(probe=probe, layers=["5", "10"])
            self.rec = Recorder(self.model, tmp / variant.replace(" ", "_"), **kwargs)
            self.rec.open()
        self.threads = [t for t in threading.enumerate() if t not in before]
        self.cpu_start = _thread_cpu(self.threads)

    def step(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.rec is not None:
            before = time.perf_counter()
            self.rec.step(loss=loss)
            self.recorder_times.append(time.perf_counter() - before)
        if self.probe_inputs is not None and (i + 1) % 10 == 0:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                self.model(self.probe_inputs)
            self.model.train(was_training)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", loss.item(), i)
            if (i + 1) % self.tb_every == 0:
                for name, param in self.model.named_parameters():
                    self.tensorboard.add_histogram(name, param, i)
                    self.tensorboard.add_histogram(f"{name}.grad", param.grad, i)
        self.times.append(time.perf_counter() - start)

    def close(self) -> tuple[float, float, float]:
        """Close the recorder or writer; mean step time, background CPU and time in ``rec.step`` per step."""
        background = (_thread_cpu(self.threads) - self.cpu_start) / len(self.times)  # read while the threads live
        if self.rec is not None:
            self.rec.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        in_step = statistics.mean(self.recorder_times[WARMUP:]) if self.recorder_times else 0.0
        return statistics.mean(self.times[WARMUP:]), background, in_step


def run_interleaved(variants: list[str], steps: int, data, probe, tmp: Path, order: random.Random) -> dict:
    """Train every variant for ``steps`` steps, one step each per round; {variant: Trainer.close()}."""
    trainers = {v: Trainer(v, probe, tmp) for v in variants}
    xs, ys = data
    for i in range(steps):
        for variant in order.sample(variants, len(variants)):
            trainers[variant].step(i, xs[i % len(xs)], ys[i % len(ys)])
    return {variant: trainer.close() for variant, trainer in trainers.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated substrings: run the variants that contain one")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = (
        [torch.randn(64, 3, 32, 32, generator=g) for _ in range(8)],
        [torch.randint(0, 10, (64,), generator=g) for _ in range(8)],
    )
    probe = (torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g))
    variants = [v for v in RECORDERS if v not in CONTROLS]
    try:
        import tensorboard  # noqa: F401

        variants += ["tensorboard histograms every 10", "tensorboard histograms every 1"]
    except ImportError:
        print("(tensorboard is not installed: its rows are skipped)")
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        variants = [v for v in variants if any(w in v for w in wanted)]
    columns: dict[str, list[tuple[float, ...]]] = {v: [] for v in [*variants, CONTROLS[1]]}
    order = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in order.sample(variants, len(variants)):
                group = [variant, *CONTROLS]
                result = run_interleaved(group, args.steps, data, probe, Path(tmp) / f"{repeat}-{variant}", order)
                (mean, background, in_step), *controls = (result[v] for v in group)
                plain = statistics.mean(m + b for m, b, _ in controls)
                columns[variant].append(((mean + background) / plain, mean, background, in_step))
                first, second = (m + b for m, b, _ in controls)
                columns[CONTROLS[1]].append((second / first, controls[1][0], controls[1][1], 0.0))
    print(
        f"recorder overhead: 4-conv CNN, SGD momentum, batch 64 of 3x32x32, {args.steps} steps, "
        f"{torch.get_num_threads()} threads; each variant interleaved step by step with two plain loops; "
        f"ratio = (step time + background threads' CPU) / the plain loops', median of {args.repeats} (range)"
    )
    print(f"  {'variant':<50} {'step':>9} {'background':>11} {'in rec.step':>12}   ratio")
    for variant in [*variants, CONTROLS[1]]:
        ratios, means, backgrounds, in_steps = zip(*columns[variant], strict=True)
        print(
            f"  {variant:<50} {statistics.median(means) * 1e3:6.2f} ms {statistics.median(backgrounds) * 1e3:8.2f} ms "
            f"{statistics.median(in_steps) * 1e3:9.2f} ms   {statistics.median(ratios):5.3f}x "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
