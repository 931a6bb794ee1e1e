"""A small CNN trained on :func:`deepscope.datasets.shapes`, cached, for attribution demos and tests.

:class:`ShapesCNN` is three conv-bn-relu blocks with max-pools, a global average pool and a linear
head, so every CAM-family method applies (CAM itself needs GAP + linear). Its receptive field
(51 px) covers a whole shape. :func:`train_shapes_cnn` trains it on synthetic shapes in about ten
seconds on two CPU cores to ≈ 98 % held-out accuracy, deterministically for a seed, and caches the
weights keyed by the hyper-parameters and a fingerprint of the code, so demos and tests train once.

Example:
    >>> model, held_out = train_shapes_cnn(seed=0)  # doctest: +SKIP
    >>> accuracy(model, held_out) > 0.95  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepscope import datasets
from deepscope._progress import track
from deepscope.datasets import ShapesData, shapes

__all__ = ["ShapesCNN", "ShapesCNNConfig", "accuracy", "default_cache_dir", "train_shapes_cnn"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # bump when the meaning of a cached file changes without a code change


class ShapesCNN(nn.Module):
    """conv-bn-relu ×3 with max-pools, global average pool, linear head.

    Layer names (for ``layer=``): ``features.conv1`` … ``features.relu3`` (the CAM layer, an 8 × 8
    map for 64 px inputs; ``features`` is the same output), ``pool``, ``fc``. The first convolution
    has stride 2 and a 5 × 5 kernel, which keeps training fast at 64 px.

    Args:
        num_classes: outputs of the linear head.
        widths: channels of the three convolutions.
    """

    def __init__(self, num_classes: int = 4, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, c1, 5, stride=2, padding=2, bias=False),
                bn1=nn.BatchNorm2d(c1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(c1, c2, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(c2),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                conv3=nn.Conv2d(c2, c3, 3, padding=1, bias=False),
                bn3=nn.BatchNorm2d(c3),
                relu3=nn.ReLU(),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)
        # Sparse last features: with GAP the background positions dilute the object's evidence,
        # and a negative shift lets only strong responses through the ReLU. Trains ~2x faster.
        nn.init.constant_(self.features.bn3.bias, -2.0)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, 3, H, W)`` in ``[0, 1]``."""
        acts = self.features(x)  # (N, C3, H/16, W/16)
        return self.fc(self.pool(acts).flatten(1))  # (N, num_classes)


@dataclass(frozen=True)
class ShapesCNNConfig:
    """Everything that determines the trained weights (the cache key is a hash of it and of the code)."""

    seed: int = 0
    epochs: int = 8
    n_train: int = 3000
    n_test: int = 1000
    size: int = 64
    classes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    radius: tuple[float, float] = (0.15, 0.25)
    widths: tuple[int, int, int] = (16, 32, 64)
    batch_size: int = 32
    lr: float = 5e-3
    cue: float | None = None  # the training images' corner-marker agreement (datasets.shapes' cue); None: no marker

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.n_train < self.batch_size or self.n_test < 1 or self.batch_size < 1:
            raise ValueError(
                f"need epochs >= 1, n_train >= batch_size >= 1 and n_test >= 1; got epochs={self.epochs}, "
                f"n_train={self.n_train}, batch_size={self.batch_size}, n_test={self.n_test}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def train_data(self) -> ShapesData:
        """The training set: ``shapes(n_train, seed=2 * seed, cue=cue)``."""
        return shapes(
            self.n_train, self.size, classes=self.classes, seed=2 * self.seed, radius=self.radius, cue=self.cue
        )

    def test_data(self) -> ShapesData:
        """The held-out set, disjoint draws: ``shapes(n_test, seed=2 * seed + 1)``.

        When training had a corner marker, the held-out images have one too, independent of the class.
        """
        cue = None if self.cue is None else 0.0  # de-biased: the marker is there but carries no information
        return shapes(self.n_test, self.size, classes=self.classes, seed=2 * self.seed + 1, radius=self.radius, cue=cue)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/deepscope``, or ``~/.cache/deepscope`` when the variable is unset or empty."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "deepscope"


def accuracy(model: nn.Module, data: ShapesData, *, batch_size: int = 500) -> float:
    """Fraction of ``data`` the model classifies correctly (eval mode restored afterwards, no grad)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                images = data.images[start : start + batch_size].to(device)
                labels = data.labels[start : start + batch_size].to(device)
                correct += int((model(images).argmax(dim=1) == labels).sum())
    finally:
        model.train(was_training)
    return correct / len(data)


def train_shapes_cnn(
    *,
    epochs: int = 8,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    n_train: int = 3000,
    size: int = 64,
    cache: bool = True,
    cue: float | None = None,
    device: torch.device | str | None = None,
) -> tuple[ShapesCNN, ShapesData]:
    """Return a :class:`ShapesCNN` trained on synthetic shapes, and its held-out set.

    Training runs on the CPU (Adam with a one-cycle schedule, batches of 32) and is deterministic
    for a given seed: the initial weights come from ``seed`` inside :func:`torch.random.fork_rng`
    and the data and batch order from ``torch.Generator`` objects, so the global RNG is untouched.
    The weights are cached under ``cache_dir`` as ``shapes_cnn-<key>.safetensors`` (or ``.pt``, a
    state dict loaded back with ``weights_only=True``, when safetensors is not installed) next to
    a JSON file with the settings, the held-out accuracy and the training time. The key hashes the
    settings and the source of this module and of :mod:`deepscope.datasets`, so a code change
    retrains rather than loading stale weights.

    Args:
        epochs: passes over the training set.
        seed: initial weights, data (training set ``seed=2 * seed``, held-out ``2 * seed + 1``) and order.
        cache_dir: where the weights are cached; default :func:`default_cache_dir`.
        n_train: training images.
        size: image side in pixels.
        cache: read and write the cache; ``False`` always trains and writes nothing.
        cue: train on images with a class-revealing corner marker of this agreement (``datasets.shapes``'
            ``cue``); the held-out set then has the marker independent of the class.
        device: where the returned model and data live (default: CPU).

    Returns:
        ``(model, held_out)``: the model in eval mode and the 1000 held-out :class:`ShapesData` images.
    """
    config = ShapesCNNConfig(seed=seed, epochs=epochs, n_train=n_train, size=size, cue=cue)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"shapes_cnn-{cache_key(config)}{'.safetensors' if _has_safetensors() else '.pt'}"
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's global RNG is untouched
        torch.manual_seed(config.seed)
        model = ShapesCNN(len(config.classes), config.widths)
    held_out = config.test_data()
    state = _load(path) if cache else None
    if state is not None:
        model.load_state_dict(state)
    else:
        start = time.perf_counter()
        _fit(model, config)
        seconds = time.perf_counter() - start
        acc = accuracy(model, held_out)
        logger.info("trained the shapes CNN in %.1f s: held-out accuracy %.1f %%", seconds, 100 * acc)
        if cache:
            meta = {"config": dataclasses.asdict(config), "accuracy": acc, "seconds": seconds}
            _save(path, model.state_dict(), meta)
    model.eval()
    if device is not None:
        return model.to(device), held_out.to(device)
    return model, held_out


def cache_key(config: ShapesCNNConfig) -> str:
    """16 hex digits identifying ``config`` and the code that trains it."""
    code = hashlib.sha256(str(_CACHE_FORMAT).encode())
    for source in (__file__, datasets.__file__):
        try:
            code.update(Path(source).read_bytes())
        except OSError:  # e.g. imported from a zip: fall back to the package version
            from deepscope import __version__

            code.update(__version__.encode())
    text = json.dumps({"config": dataclasses.asdict(config), "code": code.hexdigest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fit(model: ShapesCNN, config: ShapesCNNConfig) -> None:
    """Train ``model`` in place on the CPU; everything random comes from ``config.seed``."""
    data = config.train_data()
    order = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = config.n_train // config.batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    model.train()
    for _ in track(range(config.epochs), "training the shapes CNN"):
        perm = torch.randperm(config.n_train, generator=order)  # (n_train,)
        for step in range(steps_per_epoch):
            batch = perm[step * config.batch_size : (step + 1) * config.batch_size]
            loss = F.cross_entropy(model(data.images[batch]), data.labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _load(path: Path) -> dict[str, Tensor] | None:
    """The cached state dict, or ``None`` when absent or unreadable (a warning says why)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: retrain and overwrite it
        warnings.warn(f"ignoring the unreadable cached weights {path} ({err}); retraining", stacklevel=3)
        return None


def _save(path: Path, state: dict[str, Tensor], meta: dict[str, object]) -> None:
    """Write the weights and their metadata atomically; a cache that cannot be written only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in state.items()}, tmp)
            else:
                torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    except OSError as err:
        warnings.warn(f"could not cache the shapes CNN weights in {path.parent} ({err})", stacklevel=3)
