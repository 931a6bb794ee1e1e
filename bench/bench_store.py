"""Run-store throughput: cost of add_scalar on the training thread, commit time, downsampled reads.

Run: python bench/bench_store.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from deepscope.store import RunReader, RunWriter


def main() -> None:
    n = 200_000
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        with RunWriter(run) as writer:
            start = time.perf_counter()
            for step in range(n):
                writer.add_scalar("train/loss", step, 1.0 / (step + 1))
            added = time.perf_counter() - start
            writer.flush()
            flushed = time.perf_counter() - start
            arr = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)
            start = time.perf_counter()
            for step in range(1000):
                writer.add_tensor("repr/x", step, arr)
            writer.flush()
            tensors = time.perf_counter() - start
        with RunReader(run) as reader:
            start = time.perf_counter()
            series = reader.scalars("train/loss", max_points=2000)
            read = time.perf_counter() - start
    print(f"add_scalar: {added / n * 1e6:.2f} us/call on the caller's thread ({n} calls)")
    print(f"{n} scalars added and committed in {flushed:.2f} s")
    print(f"1000 tensors of 1000x2 float32 added and committed in {tensors:.2f} s")
    print(f"read {n} rows downsampled to {len(series.steps)} in {read * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
