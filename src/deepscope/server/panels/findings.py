"""Findings panel: what ``deepscope doctor`` found in a run, most severe first, each with its evidence plot.

The findings and the list of checks that ran are read as the report reads them (``_report_findings``);
each evidence plot is drawn by the report's own figure function (``_finding_plots.finding_figure``)
and sent as a PNG data URI. A run whose checks ran and found nothing says so: "no finding from N checks".
"""

from __future__ import annotations

import math
from typing import Any

from deepscope._diagnosis import SEVERITIES, Finding
from deepscope._finding_plots import finding_figure
from deepscope._report_findings import finding_steps
from deepscope._tags import TAGS
from deepscope.server._figures import png_uri
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["PANEL", "figure_impl", "list_impl"]


def _plain(value: Any) -> Any:
    """``value`` as JSON: mappings and sequences recursively, non-finite floats as None, other objects as text."""
    if isinstance(value, dict):
        return {str(key): _plain(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(inner) for inner in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _findings(reader: RunReader) -> list[Finding]:
    """The stored findings, most severe first; within a severity, in the doctor's stored (ranked) order."""
    found = [Finding.from_record(record, run=reader.info.name) for record in reader.findings()]
    order = {severity: i for i, severity in enumerate(SEVERITIES)}
    return sorted(found, key=lambda finding: order.get(finding.severity, len(order)))


def _card(index: int, finding: Finding) -> dict[str, Any]:
    return {
        "index": index,
        "check": finding.check,
        "severity": finding.severity,
        "category": finding.category,
        "title": finding.title,
        "step_start": finding.step_start,
        "step_end": finding.step_end,
        "steps": finding_steps(finding),
        "evidence": _plain(dict(finding.evidence)),
        "actions": list(finding.actions),
        "has_plot": finding.plot is not None,
        "plot_title": finding.plot.title if finding.plot is not None else None,
    }


def list_impl(reader: RunReader, *, severity: str = "") -> dict[str, Any]:
    """The run's findings, most severe first, optionally only those of one ``severity``.

    Returns:
        ``{"diagnosed", "checks", "counts", "raised", "total", "severity", "severities", "findings"}``:
        ``checks`` the doctor checks that ran (empty when no diagnosis was recorded), ``counts`` the findings
        per severity, ``raised`` each check with findings -> its worst severity, ``total`` all findings, and
        ``findings`` the shown ones as cards ``{index, check, severity, category, title, step_start, step_end,
        steps, evidence, actions, has_plot, plot_title}``; ``index`` is the card's place in the full sorted
        list (the ``figure`` route's argument).

    Raises:
        ValueError: ``severity`` is not empty nor one of error, warning, info.
    """
    if severity and severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}: use one of {', '.join(SEVERITIES)} (or leave it empty)")
    findings = _findings(reader)
    meta = reader.meta()
    checks = [str(name) for name in meta.get(TAGS.DOCTOR_CHECKS) or ()]
    counts = {name: 0 for name in SEVERITIES}
    raised: dict[str, str] = {}  # check -> the worst severity it raised (findings are sorted: the first one)
    for finding in findings:
        counts[finding.severity] = counts.get(finding.severity, 0) + 1
        raised.setdefault(finding.check, finding.severity)
    cards = [_card(i, f) for i, f in enumerate(findings) if not severity or f.severity == severity]
    return {
        "diagnosed": TAGS.DOCTOR_CHECKS in meta,
        "checks": checks,
        "counts": counts,
        "raised": raised,
        "total": len(findings),
        "severity": severity,
        "severities": list(SEVERITIES),
        "findings": cards,
    }


def figure_impl(reader: RunReader, *, index: int) -> dict[str, Any]:
    """The evidence figure of finding ``index`` (its place in :func:`list_impl`'s order) as a PNG data URI.

    Returns:
        ``{"index", "check", "title", "figure"}``; ``figure`` is None for a finding without an evidence plot.

    Raises:
        IndexError: no finding has this index (the message gives the valid range; HTTP 404).
    """
    findings = _findings(reader)
    if not 0 <= index < len(findings):
        held = f"its {len(findings)} findings are numbered 0–{len(findings) - 1}" if findings else "it has no finding"
        raise IndexError(f"no finding #{index} in this run: {held}")
    finding = findings[index]
    uri = png_uri(lambda path: finding_figure(finding, path)) if finding.plot is not None else None
    return {"index": index, "check": finding.check, "title": finding.title, "figure": uri}


def _available(reader: RunReader) -> bool:
    return TAGS.DOCTOR_CHECKS in reader.meta() or bool(reader.findings())


PANEL = Panel(
    name="findings",
    title="Findings",
    available=_available,
    routes=(Route("list", list_impl), Route("figure", figure_impl)),
)
