"""Reproducibility & footprint panel: what a run ran on, how to run it again, its data splits and its cost.

Reads the meta the report's *Reproducibility & footprint* section reads (``_report_repro``): the
environment every run records when it is created (``repro/environment``), the footprint of
``Recorder(footprint=True)`` (``repro/footprint``) and the split manifest (``repro/manifest/…``).
The recipe is the report's own (``recipe_text``). The dashboard does not re-read the data files the
manifest lists (they may lie anywhere on this machine): ``deepscope verify-split`` does that.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from deepscope._manifest import SplitManifest
from deepscope._report_repro import device_text, recipe_text, stored_footprint
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.footprint import (
    CPU_W_PER_THREAD,
    GRID_INTENSITY,
    PUE_DATA_CENTRE,
    PUE_WORKSTATION,
    WORLD,
    WUE_DATA_CENTRE,
)
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["MAX_ITEMS", "PANEL", "split_impl", "summary_impl"]

MAX_ITEMS = 200  # items of a split per answer
_UNKNOWN = "not recorded"


def _text(value: Any) -> str:
    if value is None or value == "":
        return _UNKNOWN
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def _environment(env: dict[str, Any]) -> list[dict[str, Any]]:
    """The environment as titled two-column tables (labels and display strings)."""
    git = env.get("git") or {}
    seed = env.get("seed") or {}
    torch = env.get("torch") or {}
    versions = env.get("versions") or {}
    argv = [str(a) for a in env.get("argv") or ()]
    code = [
        ["git commit", git.get("commit") or "not in a git repository"],
        ["uncommitted changes", _text(git.get("dirty")) if git else _UNKNOWN],
        ["repository", _text(git.get("root")) if git else _UNKNOWN],
        ["command", shlex.join(argv) if argv else _UNKNOWN],
        ["working folder", _text(env.get("cwd"))],
    ]
    determinism = [
        ["seed", str(seed["seed"]) if seed.get("seed") is not None else "not fixed (repro.seed_everything not called)"],
        ["deterministic (seed_everything)", _text(seed.get("deterministic")) if seed else _UNKNOWN],
        ["PYTHONHASHSEED", _text(seed.get("python_hash_seed")) if seed else _UNKNOWN],
        ["torch deterministic algorithms", _text(torch.get("deterministic_algorithms"))],
        ["cuDNN deterministic", _text(torch.get("cudnn_deterministic"))],
        ["cuDNN benchmark", _text(torch.get("cudnn_benchmark"))],
        *([f"${name}", _text(value)] for name, value in sorted((env.get("env") or {}).items())),
    ]
    python = " ".join(str(p) for p in (env.get("python"), env.get("implementation")) if p)
    software = [
        ["Python", python or _UNKNOWN],
        *([name, str(version)] for name, version in versions.items()),
        ["torch build", _text(torch.get("version"))],
        ["CUDA (torch build)", _text(torch.get("cuda")) if torch.get("cuda") or not torch else "none (a CPU build)"],
        ["cuDNN", _text(torch.get("cudnn")) if torch.get("cudnn") or not torch else "not used (no CUDA device)"],
    ]
    hardware = [
        ["device", device_text(env)],
        ["GPUs", _text(torch.get("devices")) if torch else _UNKNOWN],
        ["CPU", _text(env.get("cpu"))],
        ["CPU count", _text(env.get("cpu_count"))],
        ["torch threads", _text(torch.get("threads"))],
        ["machine", _text(env.get("machine"))],
        ["OS", _text(env.get("os"))],
    ]
    return [
        {"title": "Code", "rows": code},
        {"title": "Seed & determinism", "rows": determinism},
        {"title": "Software", "rows": software},
        {"title": "Hardware", "rows": hardware},
    ]


def _source(key: str, value: Any, constants: dict[str, Any], measured: bool) -> str:
    """Where a footprint constant comes from (the references of :mod:`deepscope.footprint`)."""
    if key == "grid_intensity_g_per_kwh":
        if constants.get("grid_intensity_source"):
            return str(constants["grid_intensity_source"])
        country = constants.get("country")
        if country == "WORLD" and value == WORLD:
            return "world average used by codecarbon (IEA Global Energy & CO2 Status Report 2019)"
        if measured:
            return f"codecarbon {constants.get('codecarbon_version', '')} data for {country}".replace("  ", " ")
        return "codecarbon 3.3.2 global_energy_mix.json (2023)" if country in GRID_INTENSITY else "given"
    if key == "pue":
        if value == PUE_WORKSTATION:
            return f"no data-centre overhead (a workstation); a data centre averages {PUE_DATA_CENTRE} (Uptime 2023)"
        return "Uptime Institute Global Data Center Survey 2023" if value == PUE_DATA_CENTRE else "given"
    if key == "water_l_per_kwh":
        if value == WUE_DATA_CENTRE:
            return "on-site cooling water of an average US data centre (Shehabi et al., LBNL 2016)"
        return "no on-site water (an air-cooled machine)" if value == 0 else "given"
    if key == "cpu_w_per_thread" and value == CPU_W_PER_THREAD:
        return "codecarbon's default power per thread for a CPU missing from its table"
    if key == "threads":
        return "torch.get_num_threads(), else os.cpu_count()"
    if measured and key == "cpu_power_w":
        return f"codecarbon, from the CPU load ({CPU_W_PER_THREAD:g} W per thread for a CPU model it does not know)"
    if measured and key == "ram_power_w":
        return "codecarbon's flat estimate for the memory (machine mode)"
    return ""


def _number(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _cost(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored footprint, its constants with their sources and its everyday equivalents."""
    try:
        footprint = stored_footprint(stored)
    except (KeyError, TypeError) as error:
        return {"error": f"the stored footprint is incomplete (missing {error}); record it again"}
    measured = footprint.method.startswith("codecarbon")
    constants = dict(footprint.constants)
    how = (
        "codecarbon's offline tracker measured the block (with no RAPL energy counters, as in a virtual "
        "machine, codecarbon estimates the CPU power from its load)"
        if measured
        else "power × duration × PUE, with the power estimated (no measurement)"
    )
    return {
        "seconds": _number(float(footprint.seconds)),
        "energy_kwh": _number(float(footprint.energy_kwh)),
        "co2_g": _number(float(footprint.co2_g)),
        "water_l": _number(float(footprint.water_l)),
        "method": footprint.method,
        "measured": measured,
        "how": how,
        "constants": [
            {
                "name": str(key),
                "value": _text(_number(value)) if value != "" else "—",
                "source": _source(key, value, constants, measured),
            }
            for key, value in constants.items()
        ],
        "equivalents": [
            {"name": e.name, "amount": _number(float(e.amount)), "unit": e.unit, "text": str(e)}
            for e in footprint.equivalents()
        ],
        "error": None,
    }


def _manifest(meta: dict[str, Any]) -> SplitManifest:
    """The run's split manifest. Raises LookupError when there is none, ValueError when it is damaged."""
    if f"{TAGS.MANIFEST}/splits" not in meta:
        raise LookupError("this run holds no split manifest; record one with repro.split_manifest(splits).record(run)")
    return SplitManifest.from_meta(meta)


def _splits(meta: dict[str, Any]) -> dict[str, Any] | None:
    if not any(key.startswith(f"{TAGS.MANIFEST}/") for key in meta):
        return None
    try:
        manifest = _manifest(meta)
    except (LookupError, ValueError) as error:  # SchemaVersionError is a ValueError too
        return {"digest": None, "splits": [], "duplicates": [], "error": str(error)}
    return {
        "digest": manifest.digest,
        "splits": [
            {
                "name": name,
                "kind": "files" if s.paths is not None else "items by index",
                "count": s.count,
                "digest": s.digest,
            }
            for name, s in manifest.splits.items()
        ],
        "duplicates": [{"first": a, "second": b, "count": n} for (a, b), n in manifest.duplicates.items()],
        "error": None,
    }


def summary_impl(reader: RunReader) -> dict[str, Any]:
    """Everything the panel shows except the items of a split.

    Returns:
        ``{"environment", "recipe", "footprint", "manifest", "verify"}``: ``environment`` is a list of
        ``{title, rows: [[label, value], ...]}`` tables (None without an environment); ``recipe`` the
        report's command line that reproduces the run; ``footprint`` ``{seconds, energy_kwh, co2_g,
        water_l, method, measured, how, constants: [{name, value, source}], equivalents: [{name, amount,
        unit, text}], error}`` or None when not recorded; ``manifest`` ``{digest, splits: [{name, kind,
        count, digest}], duplicates: [{first, second, count}], error}`` or None; ``verify`` the command
        that re-checks the data files against the manifest.
    """
    meta = reader.meta()
    env = meta.get(TAGS.ENVIRONMENT)
    stored = meta.get(TAGS.FOOTPRINT)
    manifest = _splits(meta)
    return {
        "environment": _environment(env) if isinstance(env, dict) else None,
        "recipe": recipe_text(env) if isinstance(env, dict) else None,
        "footprint": _cost(stored) if isinstance(stored, dict) else None,
        "manifest": manifest,
        "verify": _verify(reader, manifest),
    }


def _verify(reader: RunReader, manifest: dict[str, Any] | None) -> str | None:
    """How to check the data against the manifest: the CLI for file splits, ``verify`` for arrays and datasets."""
    if not manifest or not manifest["splits"]:
        return None
    if any(split["kind"] == "files" for split in manifest["splits"]):
        folder = shlex.quote(reader.run_dir.name)
        return f"deepscope verify-split {folder} --base FOLDER_THE_PATHS_START_FROM"
    names = ", ".join(f"{split['name']!r}: ..." for split in manifest["splits"])
    return f"SplitManifest.load(run_dir).verify({{{names}}})  # the same arrays or datasets, from deepscope.repro"


def split_impl(reader: RunReader, *, split: str, offset: int = 0, limit: int = 20) -> dict[str, Any]:
    """The items of one split of the manifest, ``limit`` of them from ``offset``: position, path and content hash.

    Returns:
        ``{"split", "kind", "count", "digest", "offset", "items": [{index, path, hash}]}``; ``path`` is None
        for a split given as an array or a dataset (its items are identified by position).

    Raises:
        LookupError: the run holds no split manifest, or no split named ``split`` (HTTP 404).
        ValueError: ``offset`` is outside 0..count-1, ``limit`` outside 1..``MAX_ITEMS``, or the manifest is
            damaged (HTTP 400).
    """
    manifest = _manifest(reader.meta())
    if split not in manifest.splits:
        raise UnknownNameError("split", split, manifest.splits)
    entry = manifest.splits[split]
    if not 1 <= limit <= MAX_ITEMS:
        raise ValueError(f"limit must be between 1 and {MAX_ITEMS}, got {limit}")
    if not 0 <= offset < max(entry.count, 1):
        raise ValueError(
            f"offset must be between 0 and {max(entry.count - 1, 0)} (split {split!r} has {entry.count} items)"
        )
    end = min(offset + limit, entry.count)
    paths = entry.paths
    return {
        "split": split,
        "kind": "files" if paths is not None else "items by index",
        "count": entry.count,
        "digest": entry.digest,
        "offset": offset,
        "items": [
            {"index": i, "path": paths[i] if paths is not None else None, "hash": entry.hashes[i]}
            for i in range(offset, end)
        ],
    }


def _available(reader: RunReader) -> bool:
    return any(
        key in (TAGS.ENVIRONMENT, TAGS.FOOTPRINT) or key.startswith(f"{TAGS.MANIFEST}/") for key in reader.meta()
    )


PANEL = Panel(
    name="footprint",
    title="Reproducibility & footprint",
    available=_available,
    routes=(Route("summary", summary_impl), Route("split", split_impl)),
)
