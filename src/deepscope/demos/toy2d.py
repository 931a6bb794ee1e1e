"""The toy 2-D task of the seed article "Visuels de l'apprentissage des réseaux de neurones".

1000 points uniform on [-5, 5]²; class 1 ("blue") inside the disc of radius 2 at (0, 0) or of
radius 1 at (3, 3), about 15.7 % of the points, so always answering "yellow" already scores
≈ 84.3 %. Network 2 → Dense(100)+ReLU → Dense(2) → Dense(1)+sigmoid, batches of 10, Adam
lr 0.01, three runs with different fixed seeds. The 2-unit bottleneck is the representation we
watch. Every run is bit-for-bit reproducible on the CPU.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from deepscope._progress import track
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.recorder import Recorder
from deepscope.registry import DEMOS

__all__ = ["CIRCLES", "Toy2DConfig", "make_data", "make_model", "record", "train_one"]

CIRCLES: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 2.0), (3.0, 3.0, 1.0))  # (x, y, radius)
CLASS_NAMES = ("yellow", "blue")  # the article's colours: outside / inside a disc
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}


@dataclass(frozen=True)
class Toy2DConfig:
    """Hyper-parameters of the toy demo (the defaults are the seed article's)."""

    n_points: int = 1000
    data_seed: int = 30  # gives 157 positives out of 1000, the expected 15.7 %
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    batch_size: int = 10
    optimizer: str = "adam"
    lr: float = 0.01
    every: int = 10

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.n_points < 10 or self.epochs < 1 or self.batch_size < 1 or self.every < 1 or not self.seeds:
            raise ValueError("n_points >= 10, epochs >= 1, batch_size >= 1, every >= 1 and at least one seed")


def make_data(n_points: int = 1000, seed: int = 30) -> tuple[Tensor, Tensor]:
    """Points uniform on [-5, 5]² and their labels (1 inside one of :data:`CIRCLES`)."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(n_points, 2, generator=generator) * 10 - 5  # (N, 2)
    inside = torch.zeros(n_points, dtype=torch.bool)
    for cx, cy, radius in CIRCLES:
        inside |= (points[:, 0] - cx) ** 2 + (points[:, 1] - cy) ** 2 <= radius**2
    return points, inside.long()


def make_model(seed: int) -> nn.Sequential:
    """2 → Dense(100)+ReLU → Dense(2) → Dense(1)+sigmoid, initialised from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            OrderedDict(
                hidden=nn.Linear(2, 100),
                relu=nn.ReLU(),
                bottleneck=nn.Linear(100, 2),
                head=nn.Linear(2, 1),
                sigmoid=nn.Sigmoid(),
            )
        )


def train_one(run_dir: Path, seed: int, config: Toy2DConfig, points: Tensor, labels: Tensor) -> Path:
    """Train one network on the task, recording it into ``run_dir``; returns ``run_dir``."""
    model = make_model(seed)
    optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.lr)
    loss_fn = nn.BCELoss()
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(points) / config.batch_size)
    recorder = Recorder(
        model,
        run_dir,
        probe=(points, labels),
        layers=["bottleneck"],
        every=config.every,
        predict="probability",
        class_names=CLASS_NAMES,
        name=f"seed {seed}",
        config={**asdict(config), "seed": seed, "task": "toy2d", "circles": CIRCLES},
    )
    with recorder as rec:
        for epoch in track(range(config.epochs), f"seed {seed}", total=config.epochs):
            order = torch.randperm(len(points), generator=generator)
            for i in range(steps_per_epoch):
                index = order[i * config.batch_size : (i + 1) * config.batch_size]
                loss = loss_fn(model(points[index]).squeeze(1), labels[index].float())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                rec.step(loss=loss, metrics={"epoch": epoch})
    return run_dir


@DEMOS.register("toy2d")
def record(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    overrides: Mapping[str, str] | None = None,
    config: Toy2DConfig | None = None,
) -> tuple[Path, ...]:
    """Train the runs (one per seed) into ``out_dir/seed-N`` and return their folders.

    ``quick`` trains two runs for two epochs (a smoke test); ``overrides`` sets fields of
    :class:`Toy2DConfig` from text (``{"optimizer": "sgd", "lr": "0.1"}``); ``config`` replaces it.
    """
    config = config or (Toy2DConfig(seeds=(0, 1), epochs=2, every=20) if quick else Toy2DConfig())
    config = apply_overrides(config, overrides or {})
    out = Path(out_dir)
    clear_runs(out)
    points, labels = make_data(config.n_points, config.data_seed)
    return tuple(train_one(out / f"seed-{seed}", seed, config, points, labels) for seed in config.seeds)
