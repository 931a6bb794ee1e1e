"""Throughput of the sharded analyses on the local backend and on Ray, and a projection for a 16-GPU cluster.

Run: python bench/bench_scale.py [--items 2000] [--repeats 3] [--gpu-speedup 20] [--quick]

Inputs: the shapes dataset (``--items`` images, 3 x 64 x 64, with labels) and the shapes CNN with
random weights (seed 0), 2 CPU threads here. Analyses: ``evaluate`` (its sharded pass: no gallery and
no bootstrap resamples, which run in this process on both backends), ``activations`` of two layers,
``top_activations`` (k = 9, no DeconvNet projections), and ``explain_dataset`` with Grad-CAM and
with integrated gradients (``n_steps=8``), both writing their shards to a temporary folder.

Each analysis runs locally and on ``deepscope.scale.Ray(workers=2)`` (two actors of one CPU and
one thread) on a local Ray instance started once (its start is timed apart). Every repeat runs
each variant once, in a random order; times are medians. Ray's time is split into a fixed overhead
and a per-item cost by the line through two runs: the full data, and one shard of ``TINY`` items.
What one more shard costs is measured with one worker on the same items and batches, cut into one
shard or into ``SHARDS``. The local and Ray results are compared (accuracy, statistics, maps).

On this 2-core machine Ray cannot be faster: its two actors share the cores the local run uses.
The projection divides the CPU cost of one batch measured here by ``--gpu-speedup`` (an
assumption, not a measurement), adds the measured per-shard overhead, and multiplies by 16 GPUs.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _whole_calls import time_whole_calls
from deepscope import activations, evaluate, explain, explain_dataset, top_activations
from deepscope.datasets import shapes
from deepscope.demos.shapes_cnn import ShapesCNN
from deepscope.scale import Ray

FORWARD_BATCH = 256  # evaluate, activations and top_activations (their default)
EXPLAIN_BATCH, SHARD = 64, 256  # explain_dataset's defaults
TINY = 256  # one shard in every analysis: the run that shows Ray's fixed overhead
SHARDS, SHARD_ITEMS = 16, 32  # per-shard overhead: 512 items as 1 shard or as 16 shards of 32, batches of 32
IG_STEPS = 8
LAYERS = ["features.relu2", "features.relu3"]
GPUS, SHARDS_PER_WORKER = 16, 4  # the projected cluster; Ray()'s default shards per worker
TOLERANCE = 1e-4  # float32 results of other batch splits and thread counts


def _evaluation_gap(local: Any, ray: Any) -> tuple[str, float]:
    accuracy = local.metrics.accuracy.value, ray.metrics.accuracy.value
    confusion = np.abs(local.metrics.confusion - ray.metrics.confusion).max()
    return f"accuracy {accuracy[0]:.4f} / {accuracy[1]:.4f}, confusion", float(
        max(confusion, abs(np.subtract(*accuracy)))
    )


def _stats_gap(local: Any, ray: Any) -> tuple[str, float]:
    fields = ("mean", "std", "min", "max", "zero_fraction")
    gaps = [
        (getattr(local.layers[n], f) - getattr(ray.layers[n], f)).abs().max().item()
        for n in local.layers
        for f in fields
    ]
    return "per-channel mean, std, min, max, zero share", max(gaps)


def _top_gap(local: Any, ray: Any) -> tuple[str, float]:
    moved = float((local.indices != ray.indices).sum())
    return "top-9 indices (how many differ), scores", max(moved, (local.scores - ray.scores).abs().max().item())


def _maps_gap(local: Any, ray: Any) -> tuple[str, float]:
    positions = np.arange(local.items)
    gap = np.abs(local.maps(positions) - ray.maps(positions)).max()
    means = max(np.abs(local.class_means[c] - ray.class_means[c]).max() for c in local.class_means)
    return f"maps of all {local.items} items, class means", float(max(gap, means))


@dataclass(frozen=True, slots=True)
class Analysis:
    """``run(model, data, backend, out)``; the per-batch work it repeats (for the projection); ``gap`` compares."""

    run: Callable[[torch.nn.Module, Any, Any, Path], Any]
    kind: str  # "forward", "gradcam" or "integrated_gradients"
    gap: Callable[[Any, Any], tuple[str, float]]


def _explainer(method: str, **params: Any) -> Callable[[torch.nn.Module, Any, Any, Path], Any]:
    def run(model: torch.nn.Module, data: Any, backend: Any, out: Path) -> Any:
        return explain_dataset(
            model, data, method, out=out, target="label", batch_size=EXPLAIN_BATCH, shard_size=SHARD,
            backend=backend, model_factory=ShapesCNN, overwrite=True, **params,
        )  # fmt: skip

    return run


def _evaluate(model: torch.nn.Module, data: Any, backend: Any, _: Path) -> Any:
    return evaluate(
        model, data, batch_size=FORWARD_BATCH, gallery=0, resamples=0, backend=backend, model_factory=ShapesCNN
    )


def _activations(model: torch.nn.Module, data: Any, backend: Any, _: Path) -> Any:
    return activations(model, data, LAYERS, batch_size=FORWARD_BATCH, backend=backend, model_factory=ShapesCNN)


def _top_activations(model: torch.nn.Module, data: Any, backend: Any, _: Path) -> Any:
    return top_activations(
        model, data, LAYERS[-1], k=9, batch_size=FORWARD_BATCH, project=False, backend=backend, model_factory=ShapesCNN
    )


ANALYSES = {
    "evaluate": Analysis(_evaluate, "forward", _evaluation_gap),
    "activations (2 layers)": Analysis(_activations, "forward", _stats_gap),
    "top_activations (k=9)": Analysis(_top_activations, "forward", _top_gap),
    "explain_dataset gradcam": Analysis(_explainer("gradcam"), "gradcam", _maps_gap),
    f"explain_dataset IG ({IG_STEPS} steps)": Analysis(
        _explainer("integrated_gradients", n_steps=IG_STEPS), "integrated_gradients", _maps_gap
    ),
}


def _head(data: tuple[torch.Tensor, torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return data[0][:count], data[1][:count]


def _start_ray() -> float:
    """Seconds to start the local Ray instance every Ray run here uses."""
    import ray
    import ray.data

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves this machine
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not two lines per run on stderr
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return time.perf_counter() - start


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``call``, after one untimed call."""
    call()
    spent = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        spent.append(time.perf_counter() - start)
    return statistics.median(spent)


def _batch_costs(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> dict[str, tuple[int, float]]:
    """Per kind of work: the batch size and the median seconds of one batch here (2 threads)."""
    forward, explained = images[:FORWARD_BATCH], images[:EXPLAIN_BATCH]

    def infer() -> None:
        with torch.inference_mode():
            model(forward)

    def integrate() -> None:
        explain(model, explained, "integrated_gradients", n_steps=IG_STEPS)

    return {
        "forward": (FORWARD_BATCH, _median_seconds(infer, repeats)),
        "gradcam": (EXPLAIN_BATCH, _median_seconds(lambda: explain(model, explained, "gradcam"), repeats)),
        "integrated_gradients": (EXPLAIN_BATCH, _median_seconds(integrate, repeats)),
    }


def _shard_overheads(model: torch.nn.Module, data: Any, repeats: int, root: Path) -> dict[str, float]:
    """Seconds one more shard costs on Ray (one worker): the same items and batches in 1 shard or ``SHARDS``."""
    items = _head(data, SHARDS * SHARD_ITEMS)
    one = Ray(workers=1, shards_per_worker=1)

    def stats(backend: Ray) -> Callable[[], object]:
        return lambda: activations(
            model, items, LAYERS, batch_size=SHARD_ITEMS, backend=backend, model_factory=ShapesCNN
        )

    def maps(shard_size: int) -> Callable[[], object]:
        return lambda: explain_dataset(
            model, items, "gradcam", out=root / f"shards-{shard_size}", target="label", batch_size=SHARD_ITEMS,
            shard_size=shard_size, backend=one, model_factory=ShapesCNN, overwrite=True,
        )  # fmt: skip

    variants = {
        "forward 1": stats(one), "forward n": stats(Ray(workers=1, shards_per_worker=SHARDS)),
        "explain 1": maps(SHARDS * SHARD_ITEMS), "explain n": maps(SHARD_ITEMS),
    }  # fmt: skip
    totals = {name: statistics.median(spent) for name, spent in time_whole_calls(variants, repeats, seed=1).items()}
    forward, maps_ = ((totals[f"{kind} n"] - totals[f"{kind} 1"]) / (SHARDS - 1) for kind in ("forward", "explain"))
    return {"forward": forward, "gradcam": maps_, "integrated_gradients": maps_}


def _keep(results: dict[Any, Any], key: Any, run: Callable[..., Any], *args: Any) -> None:
    results[key] = run(*args)


def _measure(
    model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], repeats: int
) -> tuple[dict[str, float], dict[str, tuple[str, float]], dict[str, float]]:
    """Median seconds of each variant, each analysis's local-vs-Ray difference, and the per-shard overheads."""
    tiny, two = _head(data, TINY), Ray(workers=2)
    results: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for analysis in ANALYSES.values():  # warm-up: imports, allocator pools, Ray Data's first execution
            analysis.run(model, tiny, "local", root / "warm")
        ANALYSES["evaluate"].run(model, tiny, two, root / "warm")
        variants: dict[str, Callable[[], object]] = {}
        for name, analysis in ANALYSES.items():
            for label, inputs, backend in (("local", data, "local"), ("ray", data, two), ("ray tiny", tiny, two)):
                out = root / str(len(variants))
                variants[f"{name}|{label}"] = partial(
                    _keep, results, (name, label), analysis.run, model, inputs, backend, out
                )
        totals = {key: statistics.median(spent) for key, spent in time_whole_calls(variants, repeats).items()}
        gaps = {name: ANALYSES[name].gap(results[name, "local"], results[name, "ray"]) for name in ANALYSES}
        per_shard = _shard_overheads(model, data, repeats, root)
    return totals, gaps, per_shard


def _print_projection(
    costs: dict[str, tuple[int, float]],
    per_shard: dict[str, float],
    fixed: dict[str, float],
    speedup: float,
    items: int,
) -> None:
    """Cluster items/s = 16 x per-GPU items/s = 16 / (CPU s per item / speedup + shard overhead / shard items)."""
    print(
        f"  projection for {GPUS} GPUs (Ray(gpus_per_worker=1): 16 actors), {items:,} items. ASSUMED: one GPU is "
        f"{speedup:g}x these 2 CPU threads on a batch (--gpu-speedup; not measured here); the per-shard and fixed Ray "
        "overheads stay as measured here; the data is in Ray's object store; host-to-GPU copies are not counted"
    )
    print(
        f"    per-GPU items/s = 1 / (cpu_batch_s / batch / {speedup:g} + shard_s / shard_items); "
        f"cluster items/s = {GPUS} x per-GPU; time = fixed_s + {items:,} / cluster items/s"
    )
    print(
        f"    {'work':<22} {'batch':>5} {'cpu_batch_s':>11} {'shard_items':>11} {'shard_s':>7} "
        f"{'per-GPU items/s':>15} {'cluster items/s':>15} {'fixed_s':>7} {'time s':>7}"
    )
    for kind, (batch, seconds) in costs.items():
        # evaluate, activations, top_activations: SHARDS_PER_WORKER shards per worker; explain_dataset: SHARD items
        shard = max(batch, -(-items // (GPUS * SHARDS_PER_WORKER))) if kind == "forward" else SHARD
        overhead, start = max(per_shard[kind], 0.0), max(fixed[kind], 0.0)  # below zero: noise, counted as none
        per_gpu = 1.0 / (seconds / batch / speedup + overhead / shard)
        print(
            f"    {kind:<22} {batch:5d} {seconds:11.4f} {shard:11d} {overhead:7.4f} {per_gpu:15.0f} "
            f"{GPUS * per_gpu:15.0f} {start:7.2f} {start + items / (GPUS * per_gpu):7.1f}"
        )
    print(
        "    (fixed_s: evaluate's for forward work, each explain_dataset run's for its method; "
        "shard_s: activations' for forward work, gradcam's for both explain methods)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=2_000, help="images in the dataset (the issue's 2,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (medians are printed)")
    parser.add_argument("--gpu-speedup", type=float, default=20.0, help="ASSUMED speed of one GPU over 2 CPU threads")
    parser.add_argument("--project", type=int, default=1_000_000, help="items of the projected cluster run")
    parser.add_argument("--quick", action="store_true", help="512 items, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeats = 512, 1
    if args.items < max(TINY + 1, SHARDS * SHARD_ITEMS):
        parser.error(f"--items must be at least {max(TINY + 1, SHARDS * SHARD_ITEMS)} (the overhead runs' items)")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ShapesCNN().eval()
    dataset = shapes(args.items, 64, seed=1)
    data = (dataset.images, dataset.labels)
    import ray

    ray_start = _start_ray()
    try:
        totals, gaps, per_shard = _measure(model, data, args.repeats)
    finally:
        ray.shutdown()
    costs = _batch_costs(model, dataset.images, max(args.repeats, 5))
    print(
        f"scale: shapes CNN (random weights), {args.items} images 3x64x64, {torch.get_num_threads()} threads here; "
        f"Ray(workers=2): 2 actors x 1 CPU x 1 thread on a local instance; median of {args.repeats}"
    )
    print(f"  ray.init(num_cpus=2): {ray_start:.2f} s (once, not in the times below)")
    print(
        f"  {'analysis':<30} {'local s':>7} {'items/s':>7} {'ray s':>6} {'items/s':>7} {'local/ray':>9}   "
        f"{'ray fixed s':>11} {'ray ms/item':>11} {'local ms/item':>13}"
    )
    fixed: dict[str, float] = {}
    for name, analysis in ANALYSES.items():
        local, full, one_shard = (totals[f"{name}|{label}"] for label in ("local", "ray", "ray tiny"))
        per_item = (full - one_shard) / (args.items - TINY)
        fixed.setdefault(analysis.kind, one_shard - per_item * TINY)  # the first analysis of each kind
        print(
            f"  {name:<30} {local:7.2f} {args.items / local:7.0f} {full:6.2f} {args.items / full:7.0f} "
            f"{local / full:8.2f}x   {one_shard - per_item * TINY:11.2f} {1e3 * per_item:11.3f} "
            f"{1e3 * local / args.items:13.3f}"
        )
    print(
        f"  (ray fixed s and ms/item: the line through the full run and a one-shard run of {TINY} items; "
        "ms/item includes putting the data in Ray's object store)"
    )
    print(
        f"  one more shard on Ray (1 worker, {SHARDS * SHARD_ITEMS} items as 1 or {SHARDS} shards, batches of "
        f"{SHARD_ITEMS}): activations {1e3 * per_shard['forward']:.1f} ms, explain_dataset gradcam "
        f"{1e3 * per_shard['gradcam']:.1f} ms (its shard file included)"
    )
    print(f"  local vs Ray results, largest absolute difference (tolerance {TOLERANCE:g}):")
    for name, (what, gap) in gaps.items():
        print(f"    {name:<30} {what}: {gap:.1e} {'DIFFERENT' if gap > TOLERANCE else 'equal'}")
    _print_projection(costs, per_shard, fixed, args.gpu_speedup, args.project)
    different = [name for name, (_, gap) in gaps.items() if gap > TOLERANCE]
    if different:
        raise SystemExit(f"local and Ray results differ: {', '.join(different)}")


if __name__ == "__main__":
    main()
