"""The report's *Reproducibility & footprint* section: what each run ran on, its data splits and its cost.

Layer 4: reads the meta every run holds (``repro/environment``, written when the run was created),
the split manifest when one was recorded (``repro/manifest/…``, checked again against the files
where they are now) and the footprint of ``Recorder(footprint=True)`` (``repro/footprint``). One
table row per run, and per run a one-line recipe to reproduce it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepscope._manifest import SplitManifest, verify_files
from deepscope._report_page import Section
from deepscope._tags import TAGS
from deepscope.footprint import Footprint
from deepscope.store import RunReader

__all__ = ["device_text", "recipe_text", "repro_section", "stored_footprint"]

_HEADER = ("run", "seed", "code", "torch", "device", "data splits", "energy", "CO₂-eq", "water")


def repro_section(readers: Sequence[RunReader], _fig_dir: Path) -> Section | None:
    """The runs' environments, split manifests and footprints (None when no run holds any)."""
    rows, recipes = [], []
    for reader in readers:
        meta = reader.meta()
        env = meta.get(TAGS.ENVIRONMENT)
        if env is None and not any(k.startswith(f"{TAGS.MANIFEST}/") or k == TAGS.FOOTPRINT for k in meta):
            continue
        env = env or {}
        footprint = meta.get(TAGS.FOOTPRINT) or {}
        rows.append(
            (reader.info.name, _seed(env), _code(env), _torch(env), device_text(env), _splits(meta),
             *_cost(footprint))
        )  # fmt: skip
        recipes.append(f"{reader.info.name}: {recipe_text(env)}")
        if footprint:
            equivalents = "; ".join(str(e) for e in stored_footprint(footprint).equivalents())
            constants = ", ".join(f"{k} {v:g}" for k, v in footprint["constants"].items() if isinstance(v, float))
            recipes.append(
                f"{reader.info.name} footprint: {footprint['method']}; constants: {constants}. That is {equivalents}."
            )
    if not rows:
        return None
    text = (
        "What each run ran on (recorded when the run was created), the data splits it was given (checked again "
        "against the files as they are now) and, when it was recorded with footprint=True, its energy, CO₂-eq "
        "and water. The notes give, per run, a command line that reproduces it.",
    )
    return Section("reproducibility", "Reproducibility & footprint", text, table=(_HEADER, *rows), notes=tuple(recipes))


def _seed(env: dict[str, Any]) -> str:
    seed = env.get("seed")
    if not seed:
        return "not fixed"
    return f"{seed['seed']}" + (" (deterministic)" if seed.get("deterministic") else "")


def _code(env: dict[str, Any]) -> str:
    git = env.get("git")
    if not git:
        return "not in a git repository"
    return git["commit"][:10] + (" + uncommitted changes" if git.get("dirty") else "")


def _torch(env: dict[str, Any]) -> str:
    torch = env.get("torch") or {}
    version = torch.get("version") or env.get("versions", {}).get("torch", "?")
    return version + (f", CUDA {torch['cuda']}" if torch.get("cuda") and torch.get("devices") else "")


def device_text(env: dict[str, Any]) -> str:
    devices = (env.get("torch") or {}).get("devices") or []
    threads = (env.get("torch") or {}).get("threads")
    cpu = f"{env.get('cpu', '?')}" + (f", {threads} threads" if threads else "")
    return ", ".join(devices) if devices else cpu


def _splits(meta: dict[str, Any]) -> str:
    if f"{TAGS.MANIFEST}/splits" not in meta:
        return "no manifest"
    manifest = SplitManifest.from_meta(meta)
    counts = ", ".join(f"{name} {split.count}" for name, split in manifest.splits.items())
    check = verify_files(manifest)
    checked = [d for d in check.splits if d.found is not None]
    if not checked:
        state = "not checkable without the data"
    elif all(d.removed == d.expected.count for d in checked):
        state = "files not found here"
    elif all(d.identical for d in checked):
        state = "files unchanged"
    else:
        state = "; ".join(d.summary() for d in checked if not d.identical)
    return f"{counts} (digest {manifest.digest[:10]}): {state}"


def stored_footprint(stored: dict[str, Any]) -> Footprint:
    names = ("seconds", "energy_kwh", "co2_g", "water_l", "method", "constants")
    return Footprint(**{name: stored[name] for name in names})


def _cost(footprint: dict[str, Any]) -> tuple[str, str, str]:
    if not footprint:
        return ("not recorded",) * 3  # type: ignore[return-value]
    return (
        f"{1000 * footprint['energy_kwh']:.3g} Wh",
        f"{footprint['co2_g']:.3g} g",
        f"{footprint['water_l']:.3g} L",
    )


def recipe_text(env: dict[str, Any]) -> str:
    """``git checkout … && pip install … && python …``: what reproduces the run, as far as it was recorded."""
    steps = []
    git = env.get("git")
    if git:
        steps.append(f"git checkout {git['commit']}")
    versions = env.get("versions", {})
    pins = [f"{name}=={versions[name]}" for name in ("torch", "torchvision", "deepscope") if name in versions]
    if pins:
        steps.append("pip install " + " ".join(pins))
    argv = list(env.get("argv") or [])
    if argv:
        settings = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.get("env", {}).items()))
        command = ["python", *argv] if argv[0].endswith(".py") else [Path(argv[0]).name, *argv[1:]]  # a script, a tool
        steps.append(f"{settings} {shlex.join(command)}".strip())
    recipe = " && ".join(steps) or "no environment recorded"
    if git and git.get("dirty"):
        recipe += " (the code had uncommitted changes: the commit alone may not reproduce it)"
    return recipe
