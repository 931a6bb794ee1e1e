"""``deepscope.evaluate`` against plain inference over 10,000 images, in one process on the same inputs.

Run: python bench/bench_evaluate.py [--images 10000] [--repeats 7]

Model: the shapes CNN (trained once and cached), 64 × 64 images in memory, batches of 256, 2 CPU
threads. Variants: a plain ``inference_mode`` forward loop (the reference), the same loop again (its
ratio is this machine's noise floor), ``evaluate`` with its defaults (1,000 bootstrap resamples,
12-example gallery with Grad-CAM, 2-D PCA map of 2,000 examples), and ``evaluate`` without the fixed
costs (no gallery, no resamples) to show what the streaming pass itself costs. Each repeat runs every
variant once over the whole data in a random order; ratios are the plain loop's time over the
variant's in the same repeat, median over the repeats (range), and the ratio of the best times.
The issue's target: >= 0.9. The cue audit (object masks; one backward pass per audited example
batch) is timed apart, per audited example.
"""

from __future__ import annotations

import argparse
import time

import torch

from _whole_calls import print_ratios, time_whole_calls
from deepscope.datasets import shapes
from deepscope.demos.shapes_cnn import train_shapes_cnn
from deepscope.evaluation import evaluate

BATCH = 256


def plain(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = data
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            model(images[start : start + BATCH])


VARIANTS = {
    "plain inference forward": plain,
    "plain inference forward, again (noise floor)": plain,
    "evaluate (defaults)": lambda model, data: evaluate(model, data, batch_size=BATCH),
    "evaluate (no gallery, no resamples)": lambda model, data: evaluate(
        model, data, batch_size=BATCH, gallery=0, resamples=0
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, _ = train_shapes_cnn()
    test = shapes(args.images, seed=123, radius=(0.15, 0.25))
    data = (test.images, test.labels)
    plain(model, (test.images[:BATCH], None))  # warm-up
    totals = time_whole_calls(
        {name: (lambda call=call: call(model, data)) for name, call in VARIANTS.items()}, args.repeats
    )
    print(
        f"evaluate: shapes CNN, {args.images} images 3x64x64, batches of {BATCH}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats}; ratio = plain time / variant time"
    )
    print_ratios(totals, "plain inference forward", args.images)
    audited = 512
    start = time.perf_counter()
    evaluate(model, data, masks=test.masks, gallery=0, resamples=0, audit_samples=audited, batch_size=BATCH)
    spent = time.perf_counter() - start - min(totals["evaluate (no gallery, no resamples)"])
    print(
        f"  + cue audit of {audited} examples (Grad-CAM, energy in the mask): {spent:.2f} s, "
        f"{1e3 * spent / audited:.1f} ms each"
    )


if __name__ == "__main__":
    main()
