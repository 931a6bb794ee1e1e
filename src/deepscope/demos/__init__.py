"""Built-in demos: each trains small models on data generated or shipped offline and records runs.

Demos register a ``record(out_dir, *, quick, overrides) -> tuple[Path, ...]`` function in
:data:`deepscope.registry.DEMOS`. :func:`run_demo` runs one (``deepscope demo toy2d``) or the whole
tour (``deepscope demo``), diagnoses every recorded training (:func:`deepscope.diagnostics.doctor`)
and writes the HTML report. :mod:`deepscope.demos.clinic` holds the doctor's test cases.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Registration order is the tour order: training, layer health, explanations, features, attention, evaluation,
# dataset-wide explanations.
from deepscope.demos import toy2d, digits, shapes, featurevis, attention, spurious, scale  # isort: skip
from deepscope.registry import DEMOS

__all__ = [
    "TOUR", "DemoResult", "attention", "digits", "featurevis", "run_demo", "scale", "shapes", "spurious", "toy2d",
]  # fmt: skip

TOUR = "tour"  # every registered demo, one report


@dataclass(frozen=True)
class DemoResult:
    """Where a demo wrote its runs and its report."""

    out_dir: Path
    report: Path
    runs: tuple[Path, ...] = ()


def run_demo(
    name: str = TOUR,
    out_dir: str | os.PathLike[str] = "runs/demo",
    *,
    quick: bool = False,
    overrides: Mapping[str, str] | None = None,
) -> DemoResult:
    """Record one demo (into ``out_dir/name``) or the tour (every demo), then write the report.

    Args:
        name: a demo of :data:`DEMOS` or ``"tour"``.
        out_dir: the folder that receives ``<demo>/`` run folders and the report.
        quick: much shorter runs, for smoke tests.
        overrides: demo settings as text (``{"lr": "0.1"}``); only with a named demo.
    """
    from deepscope.diagnostics import doctor
    from deepscope.report import build_report

    out = Path(out_dir)
    if name == TOUR:
        if overrides:
            raise ValueError("settings (--set) apply to one demo: name it, e.g. `deepscope demo toy2d --set lr=0.1`")
        names = DEMOS.names()
        root = out
    else:
        names = [name]
        DEMOS.get(name)  # unknown names fail before any work
        root = out / name
    runs: list[Path] = []
    for demo in names:
        runs.extend(DEMOS.get(demo)(out / demo, quick=quick, overrides=overrides))
    for run in runs:  # every recorded training gets its diagnosis, shown in the report
        if _trained(run):
            doctor(run)
    title = "deepscope tour" if name == TOUR else f"deepscope demo: {name}"
    return DemoResult(out_dir=root, report=build_report(root, title=title), runs=tuple(runs))


def _trained(run: Path) -> bool:
    """Whether the run recorded a training loss (attribution runs do not)."""
    from deepscope._tags import TAGS
    from deepscope.store import RunReader

    with RunReader(run) as reader:
        return TAGS.LOSS in reader.scalar_tags()
