"""A clinic of small trainings, healthy and deliberately broken, each recorded in a few seconds on CPU.

Every case trains on scikit-learn's bundled digits (8 × 8, flattened, or 16 × 16 for the CNN) or
on the seed article's 2-D task, with one thing done wrong, and names the doctor check that must
find it. ``bench/bench_doctor.py`` runs them all and prints which checks fired on which case; the tests
assert that each failure is found by its check and that no healthy case gets a warning.

Failure modes (check expected): learning rate far too high for a tanh network (``divergence``; a
ReLU network dies instead), a schedule whose peaks are too high (``loss_spikes``), far too low
(``plateau``), a hand-written ``log(softmax(x))`` that reaches ``log(0)`` (``non_finite``), ReLUs
killed by a very negative bias at initialisation (``dead_units``), a deep sigmoid stack
(``vanishing_gradients``), a big network on 100 training images (``overfitting``), 40 % of the
labels shuffled (``label_noise``), a validation split that copies training images (``leakage``), a
90/10 task learnt by a network that cannot see its input (``underfitting``) and weights scaled up
×8 at initialisation (``initial_loss``). The broken cases are built to fire by a wide margin, not by
the luck of one chaotic trajectory: their outcome must not depend on the CPU's vector width or
thread count.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.datasets import digits
from deepscope.demos import digits as digits_demo
from deepscope.demos import toy2d
from deepscope.recorder import Recorder
from deepscope.store import delete_run

__all__ = ["CASES", "Case", "record_case"]


@dataclass(frozen=True)
class Case:
    """One training of the clinic and the check that must flag it (``None``: healthy, nothing may warn)."""

    name: str
    expected: str | None
    description: str
    train: Callable[[Path], dict[str, Any]]  # records a run into the folder; returns doctor(datasets=...) or {}


@dataclass
class _Setup:
    """A training configuration on flattened 8 × 8 digits."""

    model: nn.Module
    lr: float = 0.05
    optimizer: str = "sgd"
    epochs: int = 6
    batch_size: int = 50
    train_size: int = 1500
    label_noise: float = 0.0
    keep_classes: tuple[int, ...] = ()  # a two-class task: the first class against the others
    imbalance: float = 0.0  # share of the majority class, for two-class tasks
    probe_from_train: bool = False
    leak: float = 0.0  # share of the validation split copied from the training split
    seed: int = 0
    naive_log_softmax: bool = False  # log(softmax(x)) by hand: -inf once a probability underflows to 0
    lr_peak: tuple[int, float] = (0, 0.0)  # (every, lr): one step at that learning rate every that many steps
    recorder: dict[str, Any] = field(default_factory=dict)


def _mlp(widths: tuple[int, ...], activation: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _flat_digits(setup: _Setup) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train x, train y, held-out x, held-out y), shuffled with the setup's seed, inputs standardised."""
    images, labels = digits(size=8)
    x = images.flatten(1)
    x = (x - x.mean()) / x.std()
    y = labels.clone()
    generator = torch.Generator().manual_seed(setup.seed)
    if setup.keep_classes:
        y = (y != setup.keep_classes[0]).long()  # class 0: the chosen digit; class 1: every other digit
        if setup.imbalance:
            minority = torch.nonzero(y == 0).flatten()
            majority = torch.nonzero(y == 1).flatten()
            keep = int(len(minority) * setup.imbalance / (1 - setup.imbalance))
            chosen = torch.cat([minority, majority[torch.randperm(len(majority), generator=generator)[:keep]]])
            x, y = x[chosen], y[chosen]
    order = torch.randperm(len(x), generator=generator)
    cut = min(setup.train_size, int(0.8 * len(x)))
    train, held = order[:cut], order[int(0.8 * len(x)) :]
    x_train, y_train = x[train], y[train].clone()
    if setup.label_noise:
        noisy = torch.rand(len(y_train), generator=generator) < setup.label_noise
        y_train[noisy] = y_train[noisy][torch.randperm(int(noisy.sum()), generator=generator)]
    return x_train, y_train, x[held], y[held]


def _train_setup(run_dir: Path, setup: _Setup) -> dict[str, Any]:
    """Train ``setup`` with the Recorder (held-out loss every epoch); the datasets the doctor may check."""
    x_train, y_train, x_held, y_held = _flat_digits(setup)
    x_val, y_val = x_held, y_held
    if setup.leak:
        copies = int(setup.leak * len(x_val))
        x_val = torch.cat([x_val[copies:], x_train[:copies]])
        y_val = torch.cat([y_val[copies:], y_train[:copies]])
    probe = (x_train[:300], y_train[:300]) if setup.probe_from_train else (x_held, y_held)
    model = setup.model
    optimizer = (torch.optim.Adam if setup.optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=setup.lr)
    generator = torch.Generator().manual_seed(setup.seed)
    steps = math.ceil(len(x_train) / setup.batch_size)
    kwargs = {"every": 5, "layers": (), **setup.recorder}
    peak_every, peak_lr = setup.lr_peak
    with Recorder(model, run_dir, probe=probe, optimizer=optimizer, overwrite=True, **kwargs) as rec:
        for epoch in range(setup.epochs):
            order = torch.randperm(len(x_train), generator=generator)
            for i in range(steps):
                if peak_every:
                    at_peak = (epoch * steps + i) % peak_every == peak_every - 1
                    optimizer.param_groups[0]["lr"] = peak_lr if at_peak else setup.lr
                index = order[i * setup.batch_size : (i + 1) * setup.batch_size]
                logits = model(x_train[index])
                if setup.naive_log_softmax:
                    loss = nn.functional.nll_loss(torch.log(torch.softmax(logits, dim=1)), y_train[index])
                else:
                    loss = nn.functional.cross_entropy(logits, y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                rec.step(loss=loss, batch_size=len(index))
            model.eval()
            with torch.no_grad():
                rec.eval_step({"loss": nn.functional.cross_entropy(model(x_val), y_val)})
            model.train()
    return {"train": x_train, "validation": x_val}


def _setup_case(make: Callable[[], _Setup]) -> Callable[[Path], dict[str, Any]]:
    return lambda run_dir: _train_setup(run_dir, make())


def _dead_relu_mlp() -> nn.Module:
    model = _mlp((64, 128, 128, 10))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.bias.fill_(-10.0)  # every pre-activation negative: the ReLUs never fire, no gradient reaches them
    return model


def _scaled_mlp() -> nn.Module:
    model = _mlp((64, 128, 10))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(8.0)  # logits in the tens: the first loss is far above ln 10
    return model


class _Blind(nn.Module):
    """A classifier that cannot see its input (it multiplies it by zero): it can only learn the class prior."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp((64, 32, 2))

    def forward(self, x: Tensor) -> Tensor:
        """The network on an all-zero input."""
        return self.net(x * 0.0)


def _healthy_cnn(run_dir: Path) -> dict[str, Any]:
    config = digits_demo.DigitsConfig(epochs=3, every=5)
    data = digits_demo.split(config.seed)
    digits_demo.train(digits_demo.make_cnn(config.seed), run_dir, "healthy CNN", config, data)
    return {}


def _healthy_toy2d(run_dir: Path) -> dict[str, Any]:
    points, labels = toy2d.make_data()
    toy2d.train_one(run_dir, 0, toy2d.Toy2DConfig(epochs=6), points, labels)
    return {}


def _vanishing(run_dir: Path) -> dict[str, Any]:
    config = digits_demo.DigitsConfig(epochs=3, every=5)
    data = digits_demo.split(config.seed)
    digits_demo.train(digits_demo.make_sigmoid_mlp(config.seed), run_dir, "deep sigmoid MLP", config, data)
    return {}


CASES: tuple[Case, ...] = (
    Case("healthy CNN", None, "the digits demo's CNN, 3 epochs", _healthy_cnn),
    Case(
        "healthy MLP",
        None,
        "a ReLU MLP 64-128-10, Adam 1e-3",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10)), lr=1e-3, optimizer="adam")),
    ),
    Case(
        "healthy wide MLP",
        None,
        "a ReLU MLP 64-256-128-10, SGD 0.05",
        _setup_case(lambda: _Setup(_mlp((64, 256, 128, 10), seed=1), seed=1)),
    ),
    Case("healthy toy 2-D", None, "the seed article's 2-D task, Adam 0.01, 6 epochs", _healthy_toy2d),
    Case(
        "learning rate too high",
        "divergence",
        "a tanh MLP with SGD at lr 10: saturated units, confidently wrong predictions",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10), nn.Tanh), lr=10.0)),
    ),
    Case(
        "learning rate peaks",
        "loss_spikes",
        "the ReLU MLP with SGD at lr 0.05 and one step at lr 5 every 25 steps (restarts peaking too high)",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10)), lr_peak=(25, 5.0))),
    ),
    Case(
        "NaN from log(softmax)",
        "non_finite",
        "the loss written log(softmax(x)) by hand, Adam at lr 0.1: a probability underflows to 0",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10)), lr=0.1, optimizer="adam", naive_log_softmax=True)),
    ),
    Case(
        "learning rate too low",
        "plateau",
        "the ReLU MLP with SGD at lr 1e-5",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10)), lr=1e-5)),
    ),
    Case(
        "dead ReLUs",
        "dead_units",
        "biases initialised at -10: no ReLU ever fires",
        _setup_case(lambda: _Setup(_dead_relu_mlp())),
    ),
    Case("vanishing gradients", "vanishing_gradients", "the digits demo's 8-layer sigmoid MLP, 3 epochs", _vanishing),
    Case(
        "over-fitting",
        "overfitting",
        "a 64-512-512-10 MLP on 100 training images, Adam 0.01, 60 epochs",
        _setup_case(
            lambda: _Setup(
                _mlp((64, 512, 512, 10)), lr=0.01, optimizer="adam", epochs=60, batch_size=20, train_size=100
            )
        ),
    ),
    Case(
        "label noise",
        "label_noise",
        "40 % of the training labels shuffled; the probe set is training data",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10)), label_noise=0.4, probe_from_train=True)),
    ),
    Case(
        "leaked duplicates",
        "leakage",
        "30 % of the validation split copied from the training split",
        _setup_case(lambda: _Setup(_mlp((64, 128, 10)), leak=0.3)),
    ),
    Case(
        "imbalance, useless model",
        "underfitting",
        "'0' against the other digits at 10/90, a blind network",
        _setup_case(lambda: _Setup(_Blind(), keep_classes=(0,), imbalance=0.9)),
    ),
    Case(
        "bad initial scale",
        "initial_loss",
        "the ReLU MLP with its weights ×8",
        _setup_case(lambda: _Setup(_scaled_mlp())),
    ),
)


def record_case(name: str, out_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Record the case ``name`` into ``out_dir/<slug>``; return the run folder and the datasets for the doctor."""
    case = next((c for c in CASES if c.name == name), None)
    if case is None:
        raise ValueError(f"unknown clinic case {name!r}; cases: {', '.join(c.name for c in CASES)}")
    run_dir = Path(out_dir) / name.replace(" ", "-").replace(",", "")
    delete_run(run_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        datasets = case.train(run_dir)
    return run_dir, datasets
