"""Layer views over a dataset against plain inference: throughput and peak memory (1k vs 10k images).

Run: python bench/bench_layers.py [--images 10000] [--repeats 9] [--no-memory]

Model: the shapes CNN (3 conv blocks, 64 × 64 inputs; trained once and cached), layer
``features.relu3`` (its last convolution block, so stopping the forward pass early saves only the
pooling and the head: the comparison is fair). Throughput: one call over the same 10,000 images in
memory (batches of 256) per variant and repeat, the variants in a random order on each repeat; the
ratio is the plain loop's time over the variant's in the same repeat, median over the repeats
(range), and the ratio of the best times; >= 0.9 is the issue's target. A second plain loop is
timed like a variant: its ratio is the protocol's noise floor on this machine. The projections (one
receptive-field measurement, the k images of each channel fetched again and projected) are a fixed
cost per call, printed apart.

Memory: each call runs in a fresh process over a dataset that draws its images from a per-index
seed (so the data itself takes no memory), after a warm-up call; the peak resident size above the
size before the call (sampled every 2 ms from /proc/self/statm) is printed for 1,000 and 10,000
images. For scale, the 10,000 images as one tensor would take 491 MB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import threading
import time

import torch

from _whole_calls import print_ratios, time_whole_calls
from deepscope.deconv import deconv_project
from deepscope.demos.shapes_cnn import train_shapes_cnn
from deepscope.layer_stats import activations, top_activations
from deepscope.receptive import receptive_field

LAYER = "features.relu3"
BATCH = 256


class NoiseImages(torch.utils.data.Dataset):
    """``n`` random 64 × 64 images, each drawn from its own seed: no memory held."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(index))


def plain(model: torch.nn.Module, data) -> None:
    loader = data if isinstance(data, torch.Tensor) else torch.utils.data.DataLoader(data, batch_size=BATCH)
    with torch.inference_mode():
        if isinstance(loader, torch.Tensor):
            for start in range(0, len(loader), BATCH):
                model(loader[start : start + BATCH])
        else:
            for batch in loader:
                model(batch)


VARIANTS = {
    "plain inference forward": plain,
    "plain inference forward, again (noise floor)": plain,
    "activations (1 layer)": lambda model, data: activations(model, data, [LAYER], batch_size=BATCH),
    "top_activations, streaming (no projections)": lambda model, data: top_activations(
        model, data, LAYER, k=9, batch_size=BATCH, project=False
    ),
    "top_activations, 8 channels with projections": lambda model, data: top_activations(
        model, data, LAYER, channels=range(8), k=9, batch_size=BATCH
    ),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_memory(name: str, n: int, queue) -> None:
    torch.set_num_threads(2)
    model, _ = train_shapes_cnn()
    VARIANTS[name](model, NoiseImages(BATCH))  # warm-up: allocator pools and kernels exist before measuring
    before, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    VARIANTS[name](model, NoiseImages(n))
    done.set()
    sampler.join()
    queue.put(max(peak[0], _rss_mb()) - before)


def peak_memory(name: str, n: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory, args=(name, n, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args()
    model, _ = train_shapes_cnn()
    data = torch.rand(args.images, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    VARIANTS["plain inference forward"](model, data[:BATCH])  # warm-up
    streaming = [name for name in VARIANTS if "with projections" not in name]
    calls = {name: (lambda name=name: VARIANTS[name](model, data)) for name in streaming}
    totals = time_whole_calls(calls, args.repeats)
    print(
        f"layer views: shapes CNN, layer {LAYER}, {args.images} images 3x64x64 in one call, batches of {BATCH}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats}; ratio = plain time / variant time"
    )
    print_ratios(totals, "plain inference forward", args.images)
    top = top_activations(model, data, LAYER, channels=range(8), k=9, project=False)
    images = data[top.indices.reshape(-1)]
    units = torch.stack(
        [top.channels.repeat_interleave(9), top.positions[..., 0].reshape(-1), top.positions[..., 1].reshape(-1)], 1
    )
    start = time.perf_counter()
    receptive_field(model, LAYER, (3, 64, 64))
    deconv_project(model, images, LAYER, units)
    spent = time.perf_counter() - start
    print(f"  + 8 channels x 9 DeconvNet projections and the receptive field: {spent:.2f} s per call")
    if args.no_memory:
        return
    print("peak resident memory above the warmed-up process (fresh process each, sampled every 2 ms, streamed data):")
    for name in (name for name in VARIANTS if "again" not in name):
        small, large = peak_memory(name, args.images // 10), peak_memory(name, args.images)
        print(f"  {name:<48} {args.images // 10:>6} images {small:7.1f} MB   {args.images:>6} images {large:7.1f} MB")


if __name__ == "__main__":
    main()
