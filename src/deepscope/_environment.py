"""What a run ran on: Python, libraries, devices, CPU, OS, the user's git commit and the settings that shape results.

Layer 1, so the run store can write it into every new run: no torch import. Torch's details (CUDA,
cuDNN, devices, threads, determinism flags) are read only when torch is already imported, which is
always the case when a model is being recorded. The git commit is that of the repository holding
the current directory (the user's project), with a dirty flag when it has uncommitted changes.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

__all__ = ["ENV_VARS", "environment", "library_versions", "note_seed"]

_LIBRARIES = ("deepscope", "torch", "torchvision", "numpy", "scikit-learn", "transformers")
_RESULT_LIBRARIES = ("deepscope", "torch", "torchvision", "numpy")  # the versions every result carries
ENV_VARS = (
    "PYTHONHASHSEED",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_LAUNCH_BLOCKING",
    "TORCH_DETERMINISTIC",
)
"""Environment variables that change results or their speed, recorded when set."""

_seeded: dict[str, Any] = {}


def note_seed(settings: dict[str, Any]) -> None:
    """Remember what :func:`deepscope.repro.seed_everything` set, so every later run records it."""
    _seeded.clear()
    _seeded.update(settings)


def environment() -> dict[str, Any]:
    """The environment as a JSON-safe dict (a new dict on every call; the slow parts are read once per process)."""
    env: dict[str, Any] = {
        **_static(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        "git": _git(os.getcwd()),
    }
    if _seeded:
        env["seed"] = dict(_seeded)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "cuda"):
        env["torch"] = _torch_details(torch)
    return env


def library_versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results, for a result's provenance."""
    static = _static()
    versions = {name: static["versions"][name] for name in _RESULT_LIBRARIES if name in static["versions"]}
    return {"python": static["python"], "platform": static["os"], **versions}


@functools.cache  # package metadata and the CPU cannot change within a process
def _static() -> dict[str, Any]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache  # one pair of git calls per folder and process
def _git(folder: str) -> dict[str, Any] | None:
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", folder, *args], capture_output=True, text=True, timeout=5, check=False
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None  # not inside a repository, or no git
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "root": run("rev-parse", "--show-toplevel")}


def _torch_details(torch: Any) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn.version() if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "cudnn_benchmark": bool(cudnn.benchmark),
    }
