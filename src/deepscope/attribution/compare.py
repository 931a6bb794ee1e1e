"""``compare``: several methods on the same inputs, scored so the user knows which map to trust.

Each method's maps are scored with the faithfulness metrics of :mod:`deepscope.attribution.metrics`:
deletion and insertion AUC (RISE protocol), the pointing game and energy-in-mask when object masks
are given, and the cascading-randomisation sanity check. The :class:`Comparison` renders as a table
and a methods × images figure, displays in Jupyter, and can be recorded into a run store for the
HTML report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepscope._format import cell
from deepscope._tags import TAGS
from deepscope.attribution import metrics as _metrics
from deepscope.attribution.base import explain
from deepscope.attribution.result import AttributionMap
from deepscope.attribution.sanity import sanity_check
from deepscope.store import RunWriter, delete_run

__all__ = ["METRICS", "Comparison", "compare"]

METRICS = ("deletion", "insertion", "pointing_game", "energy_in_mask", "sanity")
DEFAULT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "guided_backprop", "gradcam", "occlusion")
TAG = TAGS.ATTRIBUTION  # prefix of every store tag and meta key written by Comparison.record


@dataclass(frozen=True)
class MethodScores:
    """Faithfulness scores of one method; per-sample tensors ``(N,)``, ``None`` when not computed."""

    deletion_auc: Tensor | None = None  # lower is better: the score falls fast when top pixels go
    insertion_auc: Tensor | None = None  # higher is better
    pointing_game: Tensor | None = None  # 1 where the map's maximum hits the object
    energy_in_mask: Tensor | None = None  # share of positive attribution on the object
    sanity: Any = None  # the sanity-check result (verdict and per-layer similarities)
    seconds: float = 0.0  # wall time of the explanation itself

    def summary(self) -> dict[str, float | str | None]:
        """Means over samples (and the sanity verdict), for tables; samples without a score (NaN) are skipped."""
        out: dict[str, float | str | None] = {}
        for name in ("deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask"):
            value = getattr(self, name)
            out[name] = None if value is None else float(value.float().nanmean())
        out["sanity"] = None if self.sanity is None else ("pass" if self.sanity.passed else "fail")
        out["seconds"] = self.seconds
        return out


@dataclass(frozen=True)
class Comparison:
    """Maps of several methods on the same inputs, with their scores."""

    inputs: Tensor  # (N, C, H, W), detached
    results: dict[str, AttributionMap]
    scores: dict[str, MethodScores]
    display: Tensor | None = None  # (N, H, W, 3) images in [0, 1] for figures; default: the inputs min-max scaled
    captions: tuple[str, ...] = ()  # one per input, above its column in figures (e.g. file name, true class)
    masks: Tensor | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per method: mean scores, sanity verdict and time."""
        return [{"method": name, **self.scores[name].summary()} for name in self.results]

    def figure(self, out_png: str | os.PathLike[str], *, title: str = "Attribution methods compared") -> Path:
        """Write the methods × images grid (maps scaled per image; signed maps on a diverging scale)."""
        from deepscope import plots

        return plots.attribution_grid(self._display(), self._rows(), Path(out_png), titles=self.captions, title=title)

    def record(self, run_dir: str | os.PathLike[str], *, name: str = "attribution", overwrite: bool = False) -> Path:
        """Write the comparison into a run store, where ``deepscope report`` finds and renders it."""
        run = Path(run_dir)
        if overwrite:
            delete_run(run)
        with RunWriter(run, name=name, config={"methods": list(self.results)}) as writer:
            writer.add_tensor(f"{TAG}/images", 0, self._display())
            for method, result in self.results.items():
                display, signed = result.for_display()
                maps = display.cpu().numpy().astype("float16")
                writer.add_tensor(f"{TAG}/{method}/maps", 0, maps)
                writer.set_meta(f"{TAG}/{method}/signed", signed)
                writer.set_meta(f"{TAG}/{method}/target", result.target)
                for metric, value in vars(self.scores[method]).items():
                    if isinstance(value, Tensor):
                        writer.add_tensor(f"{TAG}/{method}/{metric}", 0, value.float().cpu().numpy())
                check = self.scores[method].sanity
                if check is not None:  # the cascade, for the report's similarity-vs-randomised-layers figure
                    for measure, table in check.similarity.items():
                        writer.add_tensor(f"{TAG}/{method}/sanity/{measure}", 0, table.float().cpu().numpy())
                    writer.set_meta(
                        f"{TAG}/{method}/sanity",
                        {"layers": list(check.layers), "measure": check.measure, "threshold": check.threshold,
                         "passed": check.passed},
                    )  # fmt: skip
            writer.set_meta(f"{TAG}/methods", list(self.results))
            writer.set_meta(f"{TAG}/captions", list(self.captions))
            writer.set_meta(f"{TAG}/table", self.table())
            writer.set_meta(f"{TAG}/notes", self.notes)
        return run

    def _repr_html_(self) -> str:
        import base64
        import html
        import tempfile

        rows = self.table()
        keys = list(rows[0]) if rows else []
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell(row[k]))}</td>" for k in keys) + "</tr>" for row in rows
        )
        with tempfile.TemporaryDirectory() as tmp:
            png = self.figure(Path(tmp) / "grid.png").read_bytes()
        image = base64.b64encode(png).decode("ascii")
        return f'<table><tr>{head}</tr>{body}</table><img src="data:image/png;base64,{image}">'

    def _display(self) -> Tensor:
        if self.display is not None:
            return self.display
        x = self.inputs.detach().float().cpu()
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        return ((x - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1)  # (N, H, W, C)

    def _rows(self) -> list[Any]:
        from deepscope import plots

        rows = []
        for method, result in self.results.items():
            maps, signed = result.for_display()
            notes = [_note(self.scores[method], i) for i in range(result.maps.shape[0])]
            rows.append(plots.MapRow(method, maps.cpu().numpy(), signed=signed, notes=notes))
        return rows


def _note(scores: MethodScores, i: int) -> str:
    parts = []
    if scores.deletion_auc is not None:
        parts.append(f"del {float(scores.deletion_auc[i]):.2f}")
    if scores.insertion_auc is not None:
        parts.append(f"ins {float(scores.insertion_auc[i]):.2f}")
    if scores.pointing_game is not None:
        parts.append("hit" if bool(scores.pointing_game[i]) else "miss")
    return " · ".join(parts)


def compare(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[str] = DEFAULT_METHODS,
    metrics: Sequence[str] = ("deletion", "insertion"),
    *,
    target: Any = None,
    layer: Any = None,
    masks: Tensor | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    generator: torch.Generator | None = None,
    display: Tensor | None = None,
    captions: Sequence[str] = (),
    steps: int = 50,
) -> Comparison:
    """Run ``methods`` on the same ``inputs`` and score every map with ``metrics``.

    Args:
        model: the network (left unchanged).
        inputs: a float image batch ``(N, C, H, W)``.
        methods: registry keys of :data:`deepscope.attribution.ATTRIBUTIONS`.
        metrics: any of ``"deletion"``, ``"insertion"``, ``"pointing_game"``, ``"energy_in_mask"``
            (both need ``masks``) and ``"sanity"`` (cascading randomisation; slow: one explanation
            per parametrised layer).
        target: as in :func:`deepscope.explain`; the same target is used for every method.
        layer: the layer of the CAM methods (default: the last spatial layer).
        masks: ``(N, H, W)`` boolean object masks for the pointing game and energy-in-mask.
        params: per-method parameters, e.g. ``{"integrated_gradients": {"n_steps": 64}}``.
        generator: for the stochastic methods and the sanity check's re-initialisation.
        display: ``(N, H, W, 3)`` images in [0, 1] to draw under the maps (default: the inputs rescaled).
        captions: one caption per input for figures (file names, true classes…).
        steps: points of the deletion and insertion curves (see :func:`~deepscope.attribution.metrics.deletion_curve`).
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(METRICS)}")
    if {"pointing_game", "energy_in_mask"} & set(metrics) and masks is None:
        raise ValueError("the pointing game and energy-in-mask need masks=(N, H, W) object masks")
    params = dict(params or {})
    results: dict[str, AttributionMap] = {}
    scores: dict[str, MethodScores] = {}
    for method in methods:
        method_params = dict(params.get(method, {}))
        if generator is not None and "generator" in _parameters(method):
            method_params.setdefault("generator", generator)
        method_layer = layer if _needs_layer(method) else None
        start = time.perf_counter()
        result = explain(model, inputs, method, target=target, layer=method_layer, **method_params)
        seconds = time.perf_counter() - start
        results[method] = result
        scores[method] = _score(
            model, inputs, result, metrics, masks, method_layer, method_params, generator, seconds, steps
        )
    if captions and len(captions) != inputs.shape[0]:
        raise ValueError(f"captions must give one caption per input ({inputs.shape[0]}), got {len(captions)}")
    return Comparison(
        inputs=inputs.detach(), results=results, scores=scores, display=display, masks=masks, captions=tuple(captions)
    )


def _parameters(method: str) -> set[str]:
    import inspect

    from deepscope.attribution.base import ATTRIBUTIONS

    return set(inspect.signature(ATTRIBUTIONS.get(method)).parameters)


def _needs_layer(method: str) -> bool:
    from deepscope.attribution.base import ATTRIBUTIONS

    return ATTRIBUTIONS.get(method).needs_layer


def _score(
    model: nn.Module,
    inputs: Tensor,
    result: AttributionMap,
    wanted: Sequence[str],
    masks: Tensor | None,
    layer: Any,
    method_params: dict[str, Any],
    generator: torch.Generator | None,
    seconds: float,
    steps: int,
) -> MethodScores:
    maps = result.spatial()
    target = result.target if isinstance(result.target, list) else None
    values: dict[str, Any] = {"seconds": seconds}
    if "deletion" in wanted:
        values["deletion_auc"] = _metrics.deletion_curve(model, inputs, maps, target=target, steps=steps).auc
    if "insertion" in wanted:
        values["insertion_auc"] = _metrics.insertion_curve(model, inputs, maps, target=target, steps=steps).auc
    if "pointing_game" in wanted and masks is not None:
        values["pointing_game"] = _metrics.pointing_game(maps, masks)
    if "energy_in_mask" in wanted and masks is not None:
        values["energy_in_mask"] = _metrics.energy_in_mask(maps, masks)
    if "sanity" in wanted:  # the check hands the method a fresh seeded generator at every step
        own = {k: v for k, v in method_params.items() if k != "generator"}
        values["sanity"] = sanity_check(
            model, inputs, result.method, target=target, layer=layer, generator=generator, **own
        )
    return MethodScores(**values)
