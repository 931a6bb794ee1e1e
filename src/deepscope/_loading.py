"""Load a model from a command-line spec: ``torchvision:NAME``, a TorchScript file, or ``module:factory``."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

import torch
from torch import nn

from deepscope.errors import DeepscopeError, UnknownNameError

__all__ = ["ModelSpecError", "load_model"]


class ModelSpecError(DeepscopeError, ValueError):
    """A model spec or checkpoint could not be turned into a model."""


_SPEC_HELP = "valid forms: 'torchvision:resnet18', a TorchScript file (model.pt), or 'package.module:factory'"


def load_model(spec: str, *, weights: str | Path | None = None, trust_checkpoint: bool = False) -> nn.Module:
    """Build the model that ``spec`` names, optionally loading a checkpoint's state dict.

    Checkpoints are read with ``torch.load(weights_only=True)``: they cannot run code. Pass
    ``trust_checkpoint=True`` only for files you trust, to allow arbitrary pickled objects.
    """
    model = _build(spec)
    if weights is not None:
        state = _read_checkpoint(Path(weights), trust_checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ModelSpecError(f"checkpoint {weights} does not match the model {spec!r}: {first}") from error
    return model


def _build(spec: str) -> nn.Module:
    path = Path(spec)
    if path.is_file():
        if not _is_torchscript(path):
            raise ModelSpecError(
                f"{spec} is not a TorchScript archive; a plain checkpoint holds only weights — pass the architecture "
                f"as MODEL and the file with --weights ({_SPEC_HELP})"
            )
        return torch.jit.load(str(path), map_location="cpu")
    prefix, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelSpecError(f"cannot read model spec {spec!r} (no such file either); {_SPEC_HELP}")
    if prefix == "torchvision":
        return _torchvision_model(name)
    try:
        module = importlib.import_module(prefix)
    except ImportError as error:
        raise ModelSpecError(f"cannot import module {prefix!r} for model spec {spec!r}: {error}") from error
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelSpecError(f"module {prefix!r} has no callable {name!r}; {_SPEC_HELP}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as error:
        raise ModelSpecError("torchvision is not installed: pip install 'deepscope[vision]'") from error
    available = torchvision.models.list_models()
    if name not in available:
        raise UnknownNameError("torchvision model", name, available)
    return torchvision.models.get_model(name, weights=None)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/", 2)[1:2] == ["code"] for n in archive.namelist())


def _read_checkpoint(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as error:
        if trust:
            raise
        raise ModelSpecError(
            f"{path} cannot be loaded safely (weights_only=True refused it: {str(error).splitlines()[0]}). "
            "If you trust this file, pass --trust-checkpoint to allow arbitrary pickled code."
        ) from error
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelSpecError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state
