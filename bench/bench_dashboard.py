"""Dashboard scalar endpoint on a big run: time to first view of 1 M points x 10 tags, and peak RSS.

The series are bulk-inserted into a RunWriter-created store (1 M add_scalar calls per tag would
dominate the benchmark). Each request goes through FastAPI's TestClient, so routing, the run-id
check, the store read, min/max downsampling and JSON encoding are all counted.

Run: python bench/bench_dashboard.py
"""

import resource
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from deepscope.server import create_app
from deepscope.store import RunWriter

N, TAGS, POINTS = 1_000_000, 10, 2000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with RunWriter(root / "big", name="big") as writer:
            writer.add_scalar("setup", 0, 0.0)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        conn = sqlite3.connect(root / "big" / "run.sqlite")
        with conn:
            for t in range(TAGS):
                values = rng.normal(size=N).tolist()
                conn.executemany(
                    "INSERT INTO scalars VALUES (?, ?, 0.0, ?)", ((f"t/{t}", i, v) for i, v in enumerate(values))
                )
        conn.close()
        print(f"wrote {TAGS} x {N:,} points in {time.perf_counter() - start:.1f} s")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        client = TestClient(create_app(root))
        first, warm, zoom = [], [], []
        for t in range(TAGS):
            url = f"/api/runs/big/scalars/t/{t}"
            start = time.perf_counter()
            answer = client.get(url, params={"points": POINTS}).json()
            first.append(time.perf_counter() - start)
            assert answer["total"] == N and len(answer["steps"]) <= POINTS
            start = time.perf_counter()
            client.get(url, params={"points": POINTS})
            warm.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.get(url, params={"points": POINTS, "start": 400_000, "end": 401_999})
            zoom.append(time.perf_counter() - start)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"first view per tag: median {np.median(first):.3f} s, max {max(first):.3f} s; "
            f"all {TAGS} tags {sum(first):.2f} s"
        )
        print(
            f"cached view per tag: median {np.median(warm):.3f} s; "
            f"zoom (2,000 steps, full resolution): median {np.median(zoom) * 1e3:.1f} ms"
        )
        print(f"peak RSS: {rss:.0f} MiB (before serving: {rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
