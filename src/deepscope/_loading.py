"""Load a model from a command-line spec: ``torchvision:NAME``, a model file, or ``module:factory``.

A model file is a ``torch.export`` archive (``torch.export.save``, ``.pt2``) or a TorchScript
archive (``torch.jit``, deprecated since torch 2.14). An exported program is rebuilt with
``torch.export.unflatten`` so its layers keep their names (``layer4.1.conv2``) and take hooks;
TorchScript modules take none, so only the analyses without layer hooks run on them.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscope.errors import DeepscopeError, UnknownNameError

__all__ = ["ModelSpecError", "fixed_image_size", "load_model"]


class ModelSpecError(DeepscopeError, ValueError):
    """A model spec or checkpoint could not be turned into a model."""


_SPEC_HELP = (
    "valid forms: 'torchvision:resnet18', a torch.export archive (model.pt2), a TorchScript file (model.pt), "
    "or 'package.module:factory'"
)


def load_model(spec: str, *, weights: str | Path | None = None, trust_checkpoint: bool = False) -> nn.Module:
    """Build the model that ``spec`` names, optionally loading a checkpoint's state dict.

    Checkpoints are read with ``torch.load(weights_only=True)``: they cannot run code. Pass
    ``trust_checkpoint=True`` only for files you trust, to allow arbitrary pickled objects.
    """
    model = _build(spec, trust_checkpoint)
    if weights is not None:
        state = _read_checkpoint(Path(weights), trust_checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ModelSpecError(f"checkpoint {weights} does not match the model {spec!r}: {first}") from error
    return model


def _build(spec: str, trust: bool) -> nn.Module:
    path = Path(spec)
    if path.is_file():
        kind = _archive_kind(path)
        if kind == "export":
            return _load_exported(path, trust)
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")
        raise ModelSpecError(
            f"{spec} is neither a torch.export nor a TorchScript archive; a plain checkpoint holds only weights — "
            f"pass the architecture as MODEL and the file with --weights ({_SPEC_HELP})"
        )
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


def _archive_kind(path: Path) -> str | None:
    """``"export"`` (torch.export.save), ``"torchscript"`` (torch.jit.save) or None, from the zip's entries."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith(("/archive_format", "serialized_exported_program.json")) for n in names):
        return "export"
    if any(n.split("/", 2)[1:2] == ["code"] for n in names):
        return "torchscript"
    return None


def _load_exported(path: Path, trust: bool) -> nn.Module:
    """The exported program in ``path`` as a module tree with the original layer names."""
    if not trust:
        raise ModelSpecError(
            f"{path} is a torch.export archive, and torch.export.load unpickles whatever objects it holds (it can run "
            "code); if you made or trust this file, pass --trust-checkpoint"
        )
    if not hasattr(importlib.import_module("torch.export.unflatten").InterpreterModule, "type_name"):
        raise ModelSpecError(
            f"{path} is a torch.export archive, which torch {torch.__version__} unflattens without the layers' types "
            "(later releases keep them; deepscope is tested with torch 2.14): upgrade torch, or pass the architecture "
            "as package.module:factory and the weights with --weights"
        )
    model = torch.export.unflatten(torch.export.load(str(path)))
    shape = _exported_input_shape(model)
    if shape and isinstance(shape[0], int):
        raise ModelSpecError(
            f"{path} was exported for batches of exactly {shape[0]}, and deepscope runs batches of other sizes; "
            "export it again with a dynamic batch, e.g. torch.export.export(model, (x,), dynamic_shapes=({0: "
            "torch.export.Dim('batch')},)) with an example x of 2 or more images"
        )
    return model


def _exported_input_shape(model: nn.Module) -> tuple[Any, ...] | None:
    """The shape a ``torch.export.unflatten`` model's first input was exported with: ints where fixed (else None)."""
    graph = getattr(model, "graph", None) if type(model).__module__ == "torch.export.unflatten" else None
    placeholders = [node for node in graph.nodes if node.op == "placeholder"] if graph is not None else []
    value = placeholders[0].meta.get("val") if placeholders else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def fixed_image_size(model: nn.Module) -> tuple[int, int] | None:
    """The (H, W) an exported model takes, when it was exported for one image size only (None otherwise)."""
    shape = _exported_input_shape(model)
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return shape[2], shape[3]


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
