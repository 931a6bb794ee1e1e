"""Health next to trouble: a small CNN and a deep sigmoid MLP trained on scikit-learn's digits.

Both networks see the same 16 × 16 digits (1500 for training, 297 held out as the probe set),
the same batches and the same optimiser, and both end in a 64-unit layer named ``embed`` whose
representation the report animates. The CNN (two conv-ReLU-pool blocks, two residual blocks whose
‖F(x)‖ / ‖x‖ is recorded, and two linear layers) learns in a few epochs. The MLP stacks eight
64-unit sigmoid layers: each sigmoid multiplies the backward signal by at most 1/4, so the
gradients of its first layers are orders of magnitude smaller than those of its last (vanishing
gradients, Hochreiter 1991; Glorot & Bengio 2010), the early layers barely move and the accuracy
lags. The layer-health section of the report shows both, side by side.
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
from deepscope.datasets import digits
from deepscope.demos._common import apply_overrides, clear_runs
from deepscope.probes import FeatureEvolution
from deepscope.recorder import Recorder
from deepscope.registry import DEMOS
from deepscope.repro import seed_everything, split_manifest

__all__ = ["DigitsConfig", "ResidualBlock", "make_cnn", "make_sigmoid_mlp", "record", "split", "train"]

CLASS_NAMES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DigitsConfig:
    """Settings of the digits demo."""

    epochs: int = 8
    batch_size: int = 50
    lr: float = 0.05  # SGD with momentum 0.9, for both networks
    every: int = 10
    seed: int = 0
    depth: int = 8  # sigmoid layers of the unhealthy MLP

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.every < 1 or self.depth < 1 or not self.lr > 0:
            raise ValueError("epochs, batch_size, every and depth must be >= 1 and lr > 0")


class ResidualBlock(nn.Module):
    """``x + F(x)`` with ``F`` = conv-ReLU-conv at constant width: the residual ratio ‖F(x)‖ / ‖x‖ is recorded."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """The input plus the branch's output."""
        return x + self.branch(x)


def make_cnn(seed: int) -> nn.Module:
    """conv(16)-ReLU-pool → conv(32)-ReLU-pool → two residual blocks → linear(64)-ReLU (``embed``) → linear(10)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 16, 3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(16, 32, 3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                res1=ResidualBlock(32),
                res2=ResidualBlock(32),
                flatten=nn.Flatten(),
                fc=nn.Linear(32 * 4 * 4, 64),
                embed=nn.ReLU(),
                head=nn.Linear(64, 10),
            )
        )


def make_sigmoid_mlp(seed: int, depth: int = 8) -> nn.Module:
    """``depth`` linear(64)-sigmoid layers (the last sigmoid is ``embed``) → linear(10)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = 16 * 16
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(width, 64)
            layers["embed" if i == depth else f"sigmoid{i}"] = nn.Sigmoid()
            width = 64
        layers["head"] = nn.Linear(64, 10)
        return nn.Sequential(layers)


def train(model: nn.Module, run_dir: Path, name: str, config: DigitsConfig, data: tuple[Tensor, ...]) -> Path:
    """Train ``model`` on ``data`` (see :func:`split`) with SGD and momentum, recorded into ``run_dir``."""
    x_train, y_train, x_probe, y_probe = data
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    recorder = Recorder(
        model,
        run_dir,
        probe=(x_probe, y_probe),
        layers=["embed"],
        every=config.every,
        class_names=CLASS_NAMES,
        name=name,
        config={**asdict(config), "task": "digits", "model": name},
        optimizer=optimizer,
        residual=[name for name, module in model.named_children() if isinstance(module, ResidualBlock)] or False,
        probes=[FeatureEvolution(model, "relu2", channels=range(8))] if hasattr(model, "relu2") else (),
        footprint=True,  # energy, CO₂-eq and water of the training, in the report's reproducibility section
    )
    with recorder as rec:
        for epoch in track(range(config.epochs), name, total=config.epochs):
            order = torch.randperm(len(x_train), generator=generator)
            for i in range(steps_per_epoch):
                index = order[i * config.batch_size : (i + 1) * config.batch_size]
                loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                rec.step(loss=loss, metrics={"epoch": epoch}, batch_size=len(index))
            model.eval()
            with torch.no_grad():  # the held-out loss, on the same step axis as the training loss
                rec.eval_step({"loss": nn.functional.cross_entropy(model(x_probe), y_probe)})
            model.train()
    split_manifest({"train": x_train, "held out": x_probe}).record(run_dir)  # which digits each split held
    return run_dir


def split(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """1500 training digits and 297 held out, shuffled with ``seed``."""
    images, labels = digits(size=16)
    images = (images - images.mean()) / images.std()  # zero-mean inputs: fewer ReLUs dead from the start
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, probe = order[:1500], order[1500:]
    return images[train], labels[train], images[probe], labels[probe]


@DEMOS.register("digits")
def record(
    out_dir: str | os.PathLike[str], *, quick: bool = False, overrides: Mapping[str, str] | None = None
) -> tuple[Path, ...]:
    """Train the healthy CNN and the deep sigmoid MLP on the same digits, recording both."""
    config = apply_overrides(DigitsConfig(epochs=2, every=15) if quick else DigitsConfig(), overrides or {})
    seed_everything(config.seed, deterministic=False)  # recorded by both runs; models and batches are seeded too
    out = Path(out_dir)
    clear_runs(out)
    data = split(config.seed)
    return (
        train(make_cnn(config.seed), out / "cnn", "healthy CNN", config, data),
        train(make_sigmoid_mlp(config.seed, config.depth), out / "sigmoid-mlp", "deep sigmoid MLP", config, data),
    )
