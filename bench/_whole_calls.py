"""The whole-call benchmark protocol: each variant once per repeat, in a random order, ratios to a reference.

Used by ``bench_layers.py`` and ``bench_evaluate.py`` (run as scripts from the repository root, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping


def time_whole_calls(
    variants: Mapping[str, Callable[[], object]], repeats: int, seed: int = 0, *, warm_up: bool = False
) -> dict[str, list[float]]:
    """Seconds of each call of each variant: every repeat runs each variant once, in a fresh random order.

    ``warm_up``: call every variant once first, untimed (kernels, allocator pools and imports ready).
    """
    if warm_up:
        for call in variants.values():
            call()
    totals: dict[str, list[float]] = {name: [] for name in variants}
    order = random.Random(seed)
    for _ in range(repeats):
        for name in order.sample(list(variants), len(variants)):
            start = time.perf_counter()
            variants[name]()
            totals[name].append(time.perf_counter() - start)
    return totals


def print_ratios(totals: Mapping[str, list[float]], reference: str, items: int, unit: str = "images") -> None:
    """Per variant: median time, throughput, median (range) of the per-repeat ratios and the ratio of the best times."""
    for name, spent in totals.items():
        ratios = [p / v for p, v in zip(totals[reference], spent, strict=True)]
        median, best = statistics.median(spent), min(totals[reference]) / min(spent)
        print(
            f"  {name:<48} {median:7.2f} s  {items / median:8.0f} {unit}/s   ratio "
            f"{statistics.median(ratios):5.2f}x ({min(ratios):.2f}-{max(ratios):.2f}), best times {best:4.2f}x"
        )
