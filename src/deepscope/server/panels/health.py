"""Layer-health panel: a layer × step heat map per statistic, a per-layer drill-down, gradient flow, residual ratios.

Reads the ``layer_health``, ``distributions`` and ``residual_flow`` probes' tables as the report's
health section does (its titles, log colouring and limits; rows never measured left out), with the
doctor's :class:`~deepscope._diagnosis.Thresholds` as bounds. Long runs are bucketed into at most
``columns`` heat-map columns keeping each bucket's worst value; the stacked ``(steps, statistics,
layers)`` array is cached for a few runs, keyed by the store's change signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepscope._diagnosis import Thresholds
from deepscope._distribution_summary import split_summary
from deepscope._report_health import HEALTH_PANELS
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.server._api import NotFound
from deepscope.server._cache import RunCache
from deepscope.server._downsample import minmax_indices
from deepscope.server._figures import json_floats
from deepscope.server.panels import Panel, Route
from deepscope.store import RunReader

__all__ = ["DEFAULT_COLUMNS", "PANEL", "flow_impl", "heatmap_impl", "layer_impl", "residual_impl", "summary_impl"]

DEFAULT_COLUMNS = 600
MAX_COLUMNS = 4000
MAX_POINTS = 20_000
MAX_SNAPSHOTS = 1000
_CACHED_RUNS = 4
# statistics the report does not draw: (title, log colour, fixed limits, activation modules only)
_OTHER_PANELS = {
    "act_mean": ("activation mean", False, None, False),
    "act_zero": ("exact zeros (share)", False, (0.0, 1.0), False),
    "weight_norm": ("weight norm", False, None, False),
}
# the worst end of a bucket, as the doctor reads each statistic: high dead/zero/saturated shares, gradient and
# update spikes (exploding, unstable), a fading activation spread; unknown statistics keep their maximum
_WORST = {"act_mean": "absmax", "act_std": "min"}


@dataclass(frozen=True)
class _Health:
    """A run's health tables, stacked once: ``table`` is ``(steps, statistics, layers)``."""

    steps: np.ndarray
    table: np.ndarray
    layers: list[str]
    statistics: list[str]
    activations: set[str]
    meta: dict[str, Any]
    distributions: bool
    residual: tuple[np.ndarray, np.ndarray, list[str]] | None  # (steps, (steps, blocks) ratios, block names)


_CACHE = RunCache(_CACHED_RUNS)


def _stack(reader: RunReader, tag: str) -> tuple[np.ndarray, np.ndarray]:
    steps, arrays = reader.tensors(tag)
    last = np.append(steps[1:] != steps[:-1], True)  # a step stored twice (a resumed run) counts once: its last row
    return steps[last], np.stack([array for array, keep in zip(arrays, last, strict=True) if keep])


def _read(reader: RunReader) -> _Health:
    meta, tags = reader.meta(), set(reader.tensor_tags())
    if TAGS.HEALTH not in tags or TAGS.HEALTH_LAYERS not in meta:
        raise NotFound("this run holds no layer health (record it with Recorder(health=True))")
    layers, statistics = list(meta[TAGS.HEALTH_LAYERS]), list(meta[TAGS.HEALTH_STATISTICS])
    units = set(meta.get(TAGS.HEALTH_ACTIVATION_LAYERS, layers))
    residual = None
    if TAGS.RESIDUAL in tags and TAGS.RESIDUAL_BLOCKS in meta:
        residual = (*_stack(reader, TAGS.RESIDUAL), list(meta[TAGS.RESIDUAL_BLOCKS]))
    return _Health(*_stack(reader, TAGS.HEALTH), layers, statistics, units, meta, TAGS.DISTRIBUTIONS in tags, residual)


def _load(reader: RunReader) -> _Health:
    """The run's health, from the cache unless the store changed since it was read."""
    return _CACHE.get(reader, "health", lambda: _read(reader))


def _describe(statistic: str) -> tuple[str, bool, tuple[float, float] | None, bool]:
    return HEALTH_PANELS.get(statistic) or _OTHER_PANELS.get(statistic) or (statistic, False, None, False)


def _index(names: list[str], name: str, kind: str) -> int:
    if name not in names:
        raise UnknownNameError(kind, name, names)
    return names.index(name)


def _rows(health: _Health, s: int) -> list[int]:
    """Layers with a value of statistic ``s`` (activation modules only where the report keeps only those)."""
    measured = ~np.isnan(health.table[:, s, :]).all(axis=0)
    only_units = _describe(health.statistics[s])[3]
    return [j for j, name in enumerate(health.layers) if measured[j] and (name in health.activations or not only_units)]


def _bounded(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _significant(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """Round to ``digits`` significant digits (the stored float32 precision): shorter JSON, same picture."""
    out = np.asarray(values, dtype=np.float64)
    normal = np.isfinite(out) & (np.abs(out) > 1e-200)
    exponent = np.floor(np.log10(np.abs(out, where=normal, out=np.ones_like(out))))
    scale = 10.0 ** (digits - 1 - exponent)
    return np.where(normal, np.round(out * scale) / scale, out)


def _series(steps: np.ndarray, values: np.ndarray, points: int) -> dict[str, Any]:
    """Measured points (NaN: not measured, left out) min/max-bucketed to at most ``points``, spikes kept."""
    measured = np.flatnonzero(~np.isnan(values))
    keep = measured[minmax_indices(values[measured], points)] if len(measured) else measured
    return {
        "steps": steps[keep].tolist(),
        "values": json_floats(_significant(values[keep])),
        "total": len(measured),
        "downsampled": len(keep) < len(measured),
        "nonfinite_steps": steps[keep][np.isinf(values[keep])].tolist(),
    }


def _bucket(values: np.ndarray, columns: int, worst: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous step buckets of ``values`` ``(T, L)``: ``(starts (C,), worst value (C, L), its row (C, L))``.

    Bucket sizes differ by at most one. NaN (not measured) never wins; a bucket without a value stays NaN.
    """
    n = len(values)
    starts = np.arange(min(columns, n)) * n // min(columns, n)
    key = {"max": values, "min": -values, "absmax": np.abs(values)}[worst]
    top = np.fmax.reduceat(key, starts, axis=0)  # (C, L)
    hit = key == np.repeat(top, np.diff(np.append(starts, n)), axis=0)
    at = np.minimum.reduceat(np.where(hit, np.arange(n)[:, None], n), starts, axis=0)
    at = np.where(at == n, starts[:, None], at)  # a bucket without a value points at its first step
    return starts, np.take_along_axis(values, at, axis=0), at


def summary_impl(reader: RunReader) -> dict[str, Any]:
    """What the run's health holds.

    Returns:
        ``{"layers", "statistics": [{name, title, log, limits, aggregate, layers (how many have a value)}],
        "default" (the gradient norm, else the first statistic with a value), "steps", "first_step", "last_step",
        "residual_blocks", "distributions", "gradient_flow", "nonfinite_step"}``.
    """
    health = _load(reader)
    keys = ("name", "title", "log", "limits", "aggregate", "layers")
    statistics = [
        dict(zip(keys, (name, *_describe(name)[:3], _WORST.get(name, "max"), len(_rows(health, s))), strict=True))
        for s, name in enumerate(health.statistics)
    ]
    shown = [entry["name"] for entry in statistics if entry["layers"]]
    return {
        "layers": health.layers,
        "statistics": statistics,
        "default": "grad_norm" if "grad_norm" in shown else (shown or health.statistics or [None])[0],
        "steps": len(health.steps),
        "first_step": int(health.steps[0]),
        "last_step": int(health.steps[-1]),
        "residual_blocks": health.residual[2] if health.residual else [],
        "distributions": health.distributions,
        "gradient_flow": "grad_norm" in shown,
        "nonfinite_step": health.meta.get(TAGS.HEALTH_NONFINITE),
    }


def heatmap_impl(reader: RunReader, *, statistic: str, columns: int = DEFAULT_COLUMNS) -> dict[str, Any]:
    """Statistic × (layer, step) with the steps bucketed into at most ``columns`` columns, worst value kept.

    Returns:
        ``{"statistic", "title", "log", "limits", "layers", "values" (layers × columns), "x" / "x_end" (first /
        last step of each column), "worst_steps" (layers × columns: the step of the kept value), "column_steps"
        (steps per column), "aggregate" ("max", "min" or "absmax": the value farthest from 0), "steps",
        "nonfinite" ([row, column] cells holding ±inf, or a gap after the run's first non-finite step)}``.

    Raises:
        UnknownNameError: the run has no such statistic.
        ValueError: ``columns`` is outside 1..``MAX_COLUMNS``.
    """
    health = _load(reader)
    s = _index(health.statistics, statistic, "health statistic")
    _bounded("columns", columns, 1, MAX_COLUMNS)
    rows = _rows(health, s)
    title, log, limits, _ = _describe(statistic)
    values = health.table[:, s, rows].astype(np.float64)  # (T, R)
    worst = _WORST.get(statistic, "max")
    starts, kept, at = _bucket(values, columns, worst)
    broken = np.isinf(values)
    first_bad = health.meta.get(TAGS.HEALTH_NONFINITE)
    if first_bad is not None:
        broken |= np.isnan(values) & (health.steps >= first_bad)[:, None]
    flagged = np.logical_or.reduceat(broken, starts, axis=0)  # (C, R)
    ends = np.append(starts[1:], len(values)) - 1
    return {
        "statistic": statistic,
        "title": title,
        "log": log,
        "limits": limits,
        "aggregate": worst,
        "layers": [health.layers[j] for j in rows],
        "values": json_floats(_significant(kept.T)),
        "worst_steps": health.steps[at.T].tolist(),
        "x": health.steps[starts].tolist(),
        "x_end": health.steps[ends].tolist(),
        "column_steps": (ends - starts + 1).tolist(),
        "steps": len(health.steps),
        "nonfinite": np.argwhere(flagged.T).tolist(),
    }


def _distribution(summary: np.ndarray, levels: list[float]) -> dict[str, Any] | None:
    """One stored summary as JSON; None when not measured (a layer without weights) or without a finite value."""
    dist = split_summary(summary, levels)
    if dist is None:
        return None
    return {
        "edges": json_floats(dist.edges),
        "counts": json_floats(dist.counts),
        "total": dist.total,
        "quantiles": [[level, json_floats(value)] for level, value in dist.quantiles.items()],
    }


def layer_impl(
    reader: RunReader, *, layer: str, statistic: str, step: int | None = None, points: int = 2000
) -> dict[str, Any]:
    """One layer in detail: ``statistic`` over every measured step, and everything measured at ``step`` (default: last).

    Returns:
        ``{"layer", "statistic", "title", "log", "step", "series": {steps, values, total, downsampled,
        nonfinite_steps} (each bucket's lowest and highest point kept), "values": [{statistic, title, value}],
        "distribution": {step, output, weights} or None}``, a distribution ``{edges, counts, total, quantiles}``.

    Raises:
        UnknownNameError: no such layer or statistic.
        NotFound: the health was not measured at ``step`` (the message gives the nearest measured steps).
        ValueError: ``points`` is outside 4..``MAX_POINTS``.
    """
    health = _load(reader)
    j = _index(health.layers, layer, "health layer")
    s = _index(health.statistics, statistic, "health statistic")
    _bounded("points", points, 4, MAX_POINTS)
    steps = health.steps
    t = len(steps) - 1 if step is None else int(np.searchsorted(steps, step))
    if step is not None and (t == len(steps) or steps[t] != step):
        near = np.sort(steps[np.argsort(np.abs(steps - step), kind="stable")[:3]])
        raise NotFound(
            f"layer health was not measured at step {step}; nearest measured steps: {', '.join(map(str, near))} "
            f"({len(steps)} steps from {steps[0]} to {steps[-1]})"
        )
    distribution = None
    if health.distributions and int(steps[t]) in reader.tensor_steps(TAGS.DISTRIBUTIONS):
        table = reader.tensor(TAGS.DISTRIBUTIONS, int(steps[t]))  # (layers, output|weights, summary)
        levels = list(health.meta.get(TAGS.QUANTILE_LEVELS, []))
        output, weights = (_distribution(table[j, kind], levels) for kind in (0, 1))
        distribution = {"step": int(steps[t]), "output": output, "weights": weights}
    return {
        "layer": layer,
        "statistic": statistic,
        "title": _describe(statistic)[0],
        "log": _describe(statistic)[1],
        "step": int(steps[t]),
        "series": _series(steps, health.table[:, s, j].astype(np.float64), points),
        "values": [
            {"statistic": name, "title": _describe(name)[0], "value": json_floats(_significant(health.table[t, i, j]))}
            for i, name in enumerate(health.statistics)
        ],
        "distribution": distribution,
    }


def flow_impl(reader: RunReader, *, snapshots: int = 200, points: int = 2000) -> dict[str, Any]:
    """Gradient norm of each layer at up to ``snapshots`` evenly spaced steps, and ‖∇first‖ / ‖∇last‖ over all.

    Returns:
        ``{"layers" (input → output), "steps" (snapshots), "norms" (snapshots × layers), "first_layer", "last_layer",
        "ratio" (a series, as in :func:`layer_impl`), "vanishing_ratio", "exploding_ratio"}``: the doctor's bounds
        on the ratio's median over the last half of the run.

    Raises:
        NotFound: no layer has a gradient norm.
        ValueError: ``snapshots`` is outside 1..``MAX_SNAPSHOTS`` or ``points`` outside 4..``MAX_POINTS``.
    """
    health = _load(reader)
    _bounded("snapshots", snapshots, 1, MAX_SNAPSHOTS)
    _bounded("points", points, 4, MAX_POINTS)
    s = health.statistics.index("grad_norm") if "grad_norm" in health.statistics else None
    rows = _rows(health, s) if s is not None else []
    if not rows:
        raise NotFound("this run has no gradient norm (statistic 'grad_norm') for any layer")
    values = health.table[:, s, rows].astype(np.float64)  # (T, R)
    picks = np.unique(np.linspace(0, len(values) - 1, min(len(values), snapshots)).round().astype(int))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = values[:, 0] / values[:, -1]
    limits = Thresholds()
    return {
        "layers": [health.layers[j] for j in rows],
        "steps": health.steps[picks].tolist(),
        "norms": json_floats(_significant(values[picks])),
        "first_layer": health.layers[rows[0]],
        "last_layer": health.layers[rows[-1]],
        "ratio": _series(health.steps, ratio, points),
        "vanishing_ratio": limits.vanishing_ratio,
        "exploding_ratio": limits.exploding_ratio,
    }


def residual_impl(reader: RunReader, *, points: int = 2000) -> dict[str, Any]:
    """‖F(x)‖ / ‖skip(x)‖ of each residual block over the measured steps, min/max-bucketed to ``points`` each.

    Returns:
        ``{"blocks": [{block, **series}], "threshold"}``: the doctor notes blocks whose late median stays under it.

    Raises:
        NotFound: the run recorded no residual block.
        ValueError: ``points`` is outside 4..``MAX_POINTS``.
    """
    health = _load(reader)
    _bounded("points", points, 4, MAX_POINTS)
    if health.residual is None:
        raise NotFound("this run recorded no residual block (Recorder(residual=[...]) names them)")
    steps, ratios, blocks = health.residual
    ratios = ratios.astype(np.float64)  # (T, blocks)
    series = [{"block": name, **_series(steps, ratios[:, b], points)} for b, name in enumerate(blocks)]
    return {"blocks": series, "threshold": Thresholds().residual_min}


PANEL = Panel(
    name="health",
    title="Layer health",
    available=lambda reader: TAGS.HEALTH in reader.tensor_tags(),
    routes=(
        Route("summary", summary_impl),
        Route("heatmap", heatmap_impl),
        Route("layer", layer_impl),
        Route("flow", flow_impl),
        Route("residual", residual_impl),
    ),
)
