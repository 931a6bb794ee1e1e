"""What the doctor's checks share: :class:`Finding`, :class:`Thresholds`, the registry ``CHECKS`` and :class:`RunView`.

A check is a function ``check(run: RunView, limits: Thresholds) -> list[Finding]`` registered with
``@register(name, category)``. It reads a recorded run through :class:`RunView` (numpy only, so a
run recorded on a GPU machine is diagnosed anywhere, without torch) and returns findings that cite
the numbers and steps they come from, an evidence plot and what to try next. The public face is
:mod:`deepscope.diagnostics`.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from deepscope._store_writer import json_safe
from deepscope._tags import TAGS
from deepscope.registry import Registry
from deepscope.store import FindingRecord, RunReader

__all__ = [
    "CATEGORIES",
    "CHECKS",
    "SEVERITIES",
    "EvidencePlot",
    "Finding",
    "RunView",
    "Thresholds",
    "category_of",
    "late_start",
    "register",
]

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")  # most severe first
# The order of impact of the seed "Bonnes pratiques": what to check first when a network disappoints.
CATEGORIES = ("implementation", "data", "capacity", "regularisation", "learning rate", "optimiser")


@dataclass(frozen=True)
class Thresholds:
    """Where each check draws its line; every default comes with its reason.

    Pass ``Thresholds(dead_share=0.3)`` (or ``doctor(run, thresholds={"dead_share": 0.3})``) to change one.
    """

    initial_loss_factor: float = 1.5
    """Warn when the first loss exceeds 1.5 × ln K (and ln K + 1): a fresh classifier predicts near-uniform
    probabilities, a larger loss means over-confident initial logits (bad init, no normalisation). A first
    loss under the entropy of the class frequencies / 1.5 is noted: a pretrained model, or leaking labels."""
    divergence_factor: float = 2.0
    """Error when the smoothed loss ends above 2 × its lowest value and above its start: the optimiser ran away."""
    spike_factor: float = 5.0
    """A spike is a loss above 5 × the median of the steps before it, and above the initial loss."""
    min_spikes: int = 3
    """Warn from 3 spikes on: one bad batch happens, repeated spikes mean the learning rate is too high."""
    plateau_drop: float = 0.05
    """Warn when the smoothed loss falls by less than 5 % of its start over the first half of the run."""
    overfit_rise: float = 0.10
    """Warn when the validation loss ends 10 % above its minimum while the training loss kept falling."""
    baseline_margin: float = 0.02
    """Warn when accuracy ends within 2 points of the majority baseline; below the baseline is an error."""
    energy_ratio: float = 0.05
    """Warn when the deepest watched activation's std is under 5 % of the first one's: the signal fades out."""
    dead_share: float = 0.5
    """Warn when more than half of a layer's units never fire (its capacity is lost); error from 95 %."""
    vanishing_ratio: float = 1e-3
    """Warn when the first layer's gradient norm is under 1/1000 of the last layer's: the early layers barely learn."""
    exploding_ratio: float = 1e3
    """Warn when the first layer's gradient norm is over 1000 × the last layer's: the gradients blow up backwards."""
    update_low: float = 1e-6
    """Warn when a layer's update/weight ratio stays under 1e-6 (healthy ≈ 1e-3): the layer is frozen in effect."""
    update_high: float = 0.3
    """Warn when a layer's update/weight ratio stays over 0.3: each step rewrites a third of the weights."""
    residual_min: float = 0.01
    """Note residual blocks whose ‖F(x)‖ / ‖x‖ stays under 1 %: the block adds almost nothing to its input."""
    imbalance_ratio: float = 3.0
    """Note classes whose largest is over 3 × as frequent as the smallest: accuracy alone then misleads."""
    noisy_confidence: float = 0.1
    """A sample is suspicious when its label gets under 10 % probability at every snapshot of the second half..."""
    noisy_preference: float = 0.3
    """... while another class gets over 30 %: the model prefers another class, it is not merely unsure."""
    noisy_share: float = 0.05
    """Warn when over 5 % of the probe set is suspicious (a few hard examples are normal)."""
    late_fraction: float = 0.5
    """Layer statistics are judged on the last half of the measured steps (the network after its first moves)."""


@dataclass(frozen=True, slots=True)
class EvidencePlot:
    """A plot of a finding's evidence, as data: drawn by the report and the notebook display.

    ``series`` are ``(label, x, y)`` lines (``kind="lines"``) or one ``(label, names, values)`` bar
    group (``kind="bars"``); ``references`` are horizontal ``(label, y)`` lines (a threshold, a baseline).
    """

    kind: Literal["lines", "bars"]
    title: str
    x_label: str
    y_label: str
    series: tuple[tuple[str, tuple[Any, ...], tuple[float, ...]], ...]
    references: tuple[tuple[str, float], ...] = ()
    log_y: bool = False
    span: tuple[int, int] | None = None  # the step range the finding is about, shaded
    y_limits: tuple[float, float] | None = None  # e.g. (0, 1) for accuracies and shares

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN as None)."""
        return json_safe(asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvidencePlot:
        """The plot stored by :meth:`to_json`."""
        series = tuple((s[0], tuple(s[1]), tuple(np.nan if v is None else v for v in s[2])) for s in data["series"])
        references = tuple((r[0], float(r[1])) for r in data.get("references", ()))
        span = tuple(data["span"]) if data.get("span") is not None else None
        y_limits = tuple(data["y_limits"]) if data.get("y_limits") is not None else None
        return cls(
            data["kind"],
            data["title"],
            data["x_label"],
            data["y_label"],
            series,
            references,
            bool(data.get("log_y", False)),
            span,  # type: ignore[arg-type]
            y_limits,  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One diagnosis: how bad, what was seen (the numbers and steps), a plot of it, and what to try next."""

    check: str
    severity: Severity
    title: str
    evidence: Mapping[str, Any]
    actions: tuple[str, ...]
    category: str = "implementation"
    step_start: int | None = None
    step_end: int | None = None
    plot: EvidencePlot | None = None
    run: str = ""

    def rank(self) -> tuple[int, int, int]:
        """Sort key: the most severe first, then the seed's order of impact, then the registry's order of checks."""
        names = CHECKS.names()
        order = names.index(self.check) if self.check in names else len(names)
        return SEVERITIES.index(self.severity), CATEGORIES.index(self.category), order

    def to_record(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`deepscope.store.RunWriter.add_finding` (plot and category in the evidence)."""
        evidence = {
            "values": json_safe(dict(self.evidence)),
            "category": self.category,
            "plot": self.plot.to_json() if self.plot is not None else None,
        }
        return {
            "check": self.check,
            "severity": self.severity,
            "title": self.title,
            "evidence": evidence,
            "step_start": self.step_start,
            "step_end": self.step_end,
            "actions": list(self.actions),
        }

    @classmethod
    def from_record(cls, record: FindingRecord, run: str = "") -> Finding:
        """A finding read back from a run store."""
        evidence = record.evidence
        plot = evidence.get("plot")
        return cls(
            record.check,
            record.severity,  # type: ignore[arg-type]
            record.title,
            evidence.get("values", {}),
            tuple(record.actions),
            evidence.get("category", "implementation"),
            record.step_start,
            record.step_end,
            EvidencePlot.from_json(plot) if plot else None,
            run,
        )

    def _repr_png_(self) -> bytes | None:
        from deepscope._finding_plots import finding_png  # the presentation layer, loaded to display

        return finding_png(self) if self.plot is not None else None


Check = Callable[["RunView", Thresholds], list[Finding]]
CHECKS: Registry[Check] = Registry("check")
_CATEGORY: dict[str, str] = {}


def register(name: str, category: str) -> Callable[[Check], Check]:
    """Enter a check in :data:`CHECKS`; ``category`` places it in the seed's order of impact."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")

    def add(check: Check) -> Check:
        _CATEGORY[name] = category
        return CHECKS.register(name)(check)

    return add


def category_of(check: str) -> str:
    """The category a check was registered with."""
    return _CATEGORY[check]


@dataclass
class RunView:
    """Read-only, cached access to what the checks need from a recorded run (numpy arrays)."""

    reader: RunReader
    datasets: Mapping[str, Any] | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run's name."""
        return self.reader.info.name

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """The run-level meta."""
        return self.reader.meta()

    def scalar(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(steps, values)`` of a scalar tag at full resolution, or None when not recorded."""
        if tag not in self._cache:
            found = tag in self.reader.scalar_tags()
            series = self.reader.scalars(tag) if found else None
            self._cache[tag] = (series.steps, series.values.astype(np.float64)) if series is not None else None
        return self._cache[tag]

    @property
    def loss(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The training loss ``(steps, values)``."""
        return self.scalar(TAGS.LOSS)

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        """The probe-set labels, when a probe set was recorded."""
        tags = self.reader.tensor_tags()
        return self.reader.tensor(TAGS.PROBE_LABELS, 0).astype(np.int64) if TAGS.PROBE_LABELS in tags else None

    @functools.cached_property
    def outputs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(steps, (snapshots, N, K))`` probe-set outputs, or None."""
        if TAGS.PROBE_OUTPUT not in self.reader.tensor_tags():
            return None
        steps, arrays = self.reader.tensors(TAGS.PROBE_OUTPUT)
        return steps, np.stack([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in arrays])

    @functools.cached_property
    def classes(self) -> int | None:
        """Number of classes K: from the class names, the output width or the labels (None: unknown)."""
        names = self.meta.get(TAGS.CLASS_NAMES)
        if names:
            return len(names)
        if self.outputs is not None and self.outputs[1].shape[-1] >= 2:
            return int(self.outputs[1].shape[-1])
        if self.labels is not None and self.labels.size:
            return max(2, int(self.labels.max()) + 1)
        return None

    @functools.cached_property
    def prior(self) -> np.ndarray | None:
        """Class frequencies of the probe set, ``(K,)``."""
        if self.labels is None or not self.labels.size or self.classes is None:
            return None
        counts = np.bincount(self.labels, minlength=self.classes).astype(np.float64)
        return counts / counts.sum()

    @functools.cached_property
    def health(self) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """``(steps (T,), table (statistics, layers, T), layers)`` of the layer health, or None."""
        if TAGS.HEALTH not in self.reader.tensor_tags():
            return None
        steps, tables = self.reader.tensors(TAGS.HEALTH)
        layers = list(self.meta.get(TAGS.HEALTH_LAYERS, []))
        if not layers:
            return None
        return steps, np.stack([np.asarray(t, dtype=np.float64) for t in tables], axis=-1), layers

    def statistic(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """``(steps, (layers, T), layers)`` of one health statistic (see :data:`deepscope.health.STATISTICS`)."""
        statistics = list(self.meta.get(TAGS.HEALTH_STATISTICS, []))
        if self.health is None or name not in statistics:
            return None
        steps, table, layers = self.health
        return steps, table[statistics.index(name)], layers

    @functools.cached_property
    def residual(self) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """``(steps, (blocks, T), blocks)`` residual ratios, or None."""
        if TAGS.RESIDUAL not in self.reader.tensor_tags():
            return None
        steps, rows = self.reader.tensors(TAGS.RESIDUAL)
        return (
            steps,
            np.stack([np.asarray(r, dtype=np.float64) for r in rows], axis=-1),
            list(self.meta.get(TAGS.RESIDUAL_BLOCKS, [])),
        )


def late(values: np.ndarray, fraction: float) -> np.ndarray:
    """The last ``fraction`` of the columns of ``values`` (at least one)."""
    count = values.shape[-1]
    return values[..., min(count - 1, math.floor(count * (1 - fraction))) :]


def late_start(steps: np.ndarray, fraction: float) -> int:
    """The first step of the last ``fraction`` of ``steps`` (where :func:`late` starts)."""
    return int(late(np.asarray(steps)[None], fraction)[0][0])


def smooth(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """A running median (odd window, about 2 % of the series, at least 5): spikes and batch noise removed."""
    n = len(values)
    width = window or max(5, n // 50)
    width += 1 - width % 2
    half = width // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)  # (n, width)
    return nanmedian(windows, axis=1) if n else values


def nanmedian(values: np.ndarray, axis: int | None = None) -> Any:
    """``numpy.nanmedian`` without its warning on all-NaN slices (they give NaN, which the checks handle)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def lines_plot(
    title: str,
    y_label: str,
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    references: Sequence[tuple[str, float]] = (),
    log_y: bool = False,
    span: tuple[int, int] | None = None,
    x_label: str = "training step",
    max_points: int = 400,
    y_limits: tuple[float, float] | None = None,
) -> EvidencePlot:
    """An :class:`EvidencePlot` of lines, each thinned to about ``max_points`` points (its extremes kept)."""
    thinned = tuple(
        (label, *_thin(np.asarray(x), np.asarray(y, dtype=np.float64), max_points)) for label, x, y in series
    )
    return EvidencePlot("lines", title, x_label, y_label, thinned, tuple(references), log_y, span, y_limits)  # type: ignore[arg-type]


def bars_plot(
    title: str,
    y_label: str,
    names: Sequence[str],
    values: Sequence[float],
    *,
    references: Sequence[tuple[str, float]] = (),
    log_y: bool = False,
    label: str = "",
    y_limits: tuple[float, float] | None = None,
    x_label: str = "layer",
) -> EvidencePlot:
    """An :class:`EvidencePlot` of one bar per name."""
    series = ((label, tuple(names), tuple(float(v) for v in values)),)
    return EvidencePlot("bars", title, x_label, y_label, series, tuple(references), log_y, None, y_limits)


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[tuple[Any, ...], tuple[float, ...]]:
    """At most about ``max_points`` points: each bucket's min and max, so spikes stay visible."""
    if len(x) > max_points:
        edges = np.linspace(0, len(x), max_points // 2 + 1).astype(int)
        keep = sorted(
            {int(a + np.nanargmin(y[a:b])) for a, b in itertools.pairwise(edges) if b > a and np.isfinite(y[a:b]).any()}
            | {
                int(a + np.nanargmax(y[a:b]))
                for a, b in itertools.pairwise(edges)
                if b > a and np.isfinite(y[a:b]).any()
            }
        )
        x, y = x[keep], y[keep]
    return tuple(x.tolist()), tuple(float(v) for v in y)
