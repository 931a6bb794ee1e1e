"""The report's diagnosis section: the findings ``deepscope doctor`` stored in each run, with their evidence plots.

Layer 4: reads findings from the run stores (no torch) and draws each evidence plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deepscope._diagnosis import Finding
from deepscope._finding_plots import finding_figure
from deepscope._format import cell
from deepscope._report_page import Figure, Section, slug
from deepscope._tags import TAGS
from deepscope.store import RunReader

__all__ = ["finding_steps", "findings_section"]

_HEADER = ("severity", "run", "check", "finding", "steps", "evidence", "try next")


def findings_section(readers: Sequence[RunReader], fig_dir: Path) -> Section | None:
    """A table of every stored finding (ranked as stored) and one evidence figure per finding."""
    diagnosed = [r for r in readers if TAGS.DOCTOR_CHECKS in r.meta()]
    if not diagnosed:
        return None
    rows: list[tuple[str, ...]] = []
    figures: list[Figure] = []
    for reader in diagnosed:
        name = reader.info.name
        findings = [Finding.from_record(record, run=name) for record in reader.findings()]
        if not findings:
            rows.append(("—", name, "", f"no finding ({len(reader.meta()[TAGS.DOCTOR_CHECKS])} checks)", "", "", ""))
        for i, finding in enumerate(findings):
            rows.append(
                (
                    finding.severity,
                    name,
                    finding.check,
                    finding.title,
                    finding_steps(finding),
                    _evidence(finding),
                    finding.actions[0] if finding.actions else "",
                )
            )
            if finding.plot is not None:
                png = finding_figure(finding, fig_dir / f"finding_{slug(name)}_{i}_{finding.check}.png")
                caption = f"{name} · {finding.severity}: {finding.title}. Next: " + "; ".join(finding.actions)
                figures.append(Figure(png, caption))
    return Section(
        "diagnosis",
        "Diagnosis",
        (
            "Findings of `deepscope doctor`, most severe first, then in the order of impact of the seed 'Bonnes "
            "pratiques' (implementation, data, capacity, regularisation, learning rate, optimiser). Each cites "
            "the numbers and steps it judged; its thresholds are documented in deepscope.diagnostics.Thresholds. "
            "An error means the run is broken, a warning that it is likely to disappoint, an info a fact to "
            "keep in mind when reading the other sections.",
        ),
        figures=tuple(figures),
        table=(_HEADER, *rows),
    )


def finding_steps(finding: Finding) -> str:
    if finding.step_start is None:
        return ""
    return f"{finding.step_start}–{finding.step_end}" if finding.step_end is not None else str(finding.step_start)


def _evidence(finding: Finding) -> str:
    """The finding's scalar numbers, ``key=value``; nested evidence (per layer, examples) is left to the figure."""
    return ", ".join(
        f"{key}={cell(value) if isinstance(value, float) else value}"
        for key, value in finding.evidence.items()
        if isinstance(value, (int, float, str)) and not isinstance(value, bool)
    )
