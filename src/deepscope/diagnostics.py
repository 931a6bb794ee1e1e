"""The doctor: automatic diagnosis of a recorded run, each finding with its evidence and the next thing to try.

:func:`doctor` runs every check of the registry :data:`CHECKS` on a run store and returns
:class:`Finding` objects ranked by severity, then by the order of impact of the seed "Bonnes
pratiques" — implementation, data, capacity (under-fitting), regularisation (over-fitting),
learning rate, optimiser — and stores them in the run, where the report shows them with their
evidence plots. Each check cites the numbers and step range it judged, and every line it draws
is a field of :class:`Thresholds` with its default and reason. It reads the store only (numpy,
no torch), so a run recorded on a GPU machine is diagnosed anywhere.

Checks (name, category): ``non_finite``, ``initial_loss``, ``dead_units``, ``vanishing_gradients``
(also exploding), ``residual_idle`` (implementation); ``class_imbalance``, ``leakage`` (needs the
datasets), ``label_noise`` (data); ``underfitting``, ``low_activation_energy`` (capacity);
``overfitting`` (regularisation); ``divergence``, ``loss_spikes``, ``plateau``, ``update_ratio``
(learning rate). Add one with ``@deepscope._diagnosis.register(name, category)``.

Example:
    >>> findings = doctor("runs/exp1")  # doctest: +SKIP
    >>> [(f.severity, f.title) for f in findings]  # doctest: +SKIP
    [('error', 'vanishing gradients: ‖∇fc1‖ / ‖∇head‖ = 8.3e-07 (median of the last half)'), ...]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

# the checks register themselves in CHECKS on import; this order breaks ties between equally severe findings
from deepscope import _checks_training, _checks_layers, _checks_data  # noqa: F401  # isort: skip
from deepscope._diagnosis import (
    CATEGORIES,
    CHECKS,
    SEVERITIES,
    EvidencePlot,
    Finding,
    RunView,
    Thresholds,
    category_of,
)
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.store import RunReader, replace_findings

__all__ = ["CATEGORIES", "CHECKS", "SEVERITIES", "EvidencePlot", "Finding", "Thresholds", "doctor", "stored_findings"]


def doctor(
    run_dir: str | os.PathLike[str],
    *,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    datasets: Mapping[str, Any] | None = None,
    checks: Sequence[str] | None = None,
    record: bool = True,
) -> list[Finding]:
    """Diagnose the run in ``run_dir``: its findings, most severe first.

    Args:
        run_dir: a run folder (a store written by the Recorder).
        thresholds: a :class:`Thresholds`, or a mapping of the fields to change (``{"dead_share": 0.3}``).
        datasets: the splits, ``{"train": ..., "validation": ...}`` (arrays, tensors, datasets of
            ``(input, label)`` or lists of file paths), for the leakage check; without them it is skipped.
        checks: names of the checks to run (default: all of :data:`CHECKS`).
        record: store the findings in the run, replacing those of the same checks from an earlier
            diagnosis (the report shows them). A run still being recorded cannot be written: pass False.

    Returns:
        The findings, sorted by severity and then by the seed's order of impact.
    """
    limits = _thresholds(thresholds)
    names = list(CHECKS.names()) if checks is None else list(checks)
    functions = [CHECKS.get(name) for name in names]  # unknown names raise with the closest valid ones
    with RunReader(run_dir) as reader:
        view = RunView(reader, datasets)
        checked = sorted(set(view.meta.get(TAGS.DOCTOR_CHECKS, ())) | set(names))
        findings = [
            dataclasses.replace(finding, run=view.name, category=category_of(name))
            for name, function in zip(names, functions, strict=True)
            for finding in function(view, limits)
        ]
    findings.sort(key=Finding.rank)
    if record:
        records = [finding.to_record() for finding in findings]
        meta = {TAGS.DOCTOR_CHECKS: checked}
        if checks is None:
            replace_findings(run_dir, records, meta=meta)
        else:
            for name in names:
                replace_findings(run_dir, [r for r in records if r["check"] == name], check=name, meta=meta)
    return findings


def stored_findings(run_dir: str | os.PathLike[str]) -> list[Finding]:
    """The findings a previous :func:`doctor` stored in the run, in their ranked order."""
    with RunReader(run_dir) as reader:
        name = reader.info.name
        return [Finding.from_record(record, run=name) for record in reader.findings()]


def _thresholds(value: Thresholds | Mapping[str, float] | None) -> Thresholds:
    if value is None or isinstance(value, Thresholds):
        return value or Thresholds()
    fields = {f.name for f in dataclasses.fields(Thresholds)}
    unknown = [key for key in value if key not in fields]
    if unknown:
        raise UnknownNameError("threshold", unknown[0], fields)
    return dataclasses.replace(Thresholds(), **value)
