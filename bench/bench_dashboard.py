"""Dashboard on a big run, in real Chromium: time to first meaningful paint and the server's memory.

The run holds 10 scalar tags of 1,000,000 points each and the layer-health table of 50 layers x
10,000 recorded steps (the issue's benchmark). Scalars are bulk-inserted into a RunWriter-created
store (10 M ``add_scalar`` calls would dominate the benchmark); the health tables go through
``RunWriter.add_tensor`` as the Recorder writes them. The dashboard runs as ``deepscope serve`` in
its own process, so its peak RSS (``VmHWM``) is the server's alone.

"First paint" is measured in the page: from navigation start to the moment the panel has drawn its
data (the scalar chart holds its points; the health heat map is drawn, the rest of the panel may
follow), in fresh browser contexts (no HTTP or compiled-code cache), each against a freshly started
server (nothing cached in it), then against one warm server.

Run: python bench/bench_dashboard.py [--loads 5]
"""

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from deepscope._tags import TAGS
from deepscope.health import STATISTICS
from deepscope.store import RunWriter

N, SCALAR_TAGS, LAYERS, HEALTH_STEPS = 1_000_000, 10, 50, 10_000
CHROMIUM = "/usr/bin/chromium"
TARGET_PAINT_S, TARGET_RSS_MIB = 1.0, 300


def build_run(root: Path) -> None:
    rng = np.random.default_rng(0)
    with RunWriter(root / "big", name="big run") as writer:
        writer.set_meta(TAGS.HEALTH_LAYERS, [f"block{i}.conv" for i in range(LAYERS)])
        writer.set_meta(TAGS.HEALTH_STATISTICS, list(STATISTICS))
        writer.set_meta(TAGS.HEALTH_ACTIVATION_LAYERS, [])
        for step in range(HEALTH_STEPS):
            writer.add_tensor(TAGS.HEALTH, step, rng.random((len(STATISTICS), LAYERS), dtype=np.float32))
    conn = sqlite3.connect(root / "big" / "run.sqlite")
    with conn:
        for t in range(SCALAR_TAGS):
            values = np.cumsum(rng.normal(size=N)).tolist()
            conn.executemany(
                "INSERT INTO scalars VALUES (?, ?, 0.0, ?)", ((f"train/metric{t}", i, v) for i, v in enumerate(values))
            )
    conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(root: Path):
    """``deepscope serve root`` in its own process: yields ``(base_url, pid)``."""
    port = free_port()
    command = [sys.executable, "-m", "deepscope.cli", "serve", str(root), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the dashboard did not start: {server.stderr.read().decode()}")
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def api_seconds(url: str) -> float:
    start = time.perf_counter()
    json.loads(urllib.request.urlopen(url, timeout=60).read())
    return time.perf_counter() - start


def first_paint(browser, url: str, panel: str, ready_js: str) -> float:
    context = browser.new_context()
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{url}/#run=big&panel={panel}")
    page.wait_for_function(ready_js, timeout=30_000)
    painted = page.evaluate("performance.now()") / 1000
    context.close()
    return painted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5, help="fresh page loads per panel")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build_run(root)
        size = sum(f.stat().st_size for f in (root / "big").rglob("*") if f.is_file()) / 2**20
        print(
            f"run: {SCALAR_TAGS} scalar tags x {N:,} points + health {LAYERS} layers x {HEALTH_STEPS:,} steps "
            f"({size:.0f} MiB on disk, written in {time.perf_counter() - start:.0f} s)"
        )
        scalars_js = "() => Number(document.querySelector('.chart')?.dataset.points) > 0"
        health_js = "() => document.getElementById('health-heatmap')?.data?.length > 0"  # the heat map drawn
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
            cold: dict[str, list[float]] = {"scalars": [], "health": []}
            for _ in range(args.loads):  # a fresh server each time: nothing cached in it
                for panel, ready in (("scalars", scalars_js), ("health", health_js)):
                    with serving(root) as (url, _pid):
                        cold[panel].append(first_paint(browser, url, panel, ready))
            with serving(root) as (url, pid):
                rss_idle = rss_mib(pid)[0]
                series = [f"{url}/api/scalars/series?run=big&tag=train/metric{t}" for t in range(SCALAR_TAGS)]
                first = [api_seconds(view) for view in series]
                again = [api_seconds(view) for view in series]
                zoom = [
                    api_seconds(f"{url}/api/scalars/series?run=big&tag=train/metric{t}&start=400000&end=401999")
                    for t in range(SCALAR_TAGS)
                ]
                health = [api_seconds(f"{url}/api/health/heatmap?run=big&statistic=grad_norm") for _ in range(3)]
                warm = {
                    panel: [first_paint(browser, url, panel, ready) for _ in range(args.loads)]
                    for panel, ready in (("scalars", scalars_js), ("health", health_js))
                }
                rss_now, rss_peak = rss_mib(pid)
            browser.close()
    print(
        f"API, scalar first view (2,000 of 1 M points): median {statistics.median(first):.3f} s, "
        f"max {max(first):.3f} s over {SCALAR_TAGS} tags"
    )
    print(f"API, the same views again (cached until the run changes): median {statistics.median(again) * 1e3:.1f} ms")
    print(f"API, zoom (2,000 steps at full resolution): median {statistics.median(zoom) * 1e3:.1f} ms")
    print(f"API, health heatmap ({LAYERS} x {HEALTH_STEPS:,}): first {health[0]:.3f} s, then {min(health[1:]):.3f} s")
    for name in ("scalars", "health"):
        verdict = "meets" if statistics.median(cold[name]) < TARGET_PAINT_S else "MISSES"
        print(
            f"Chromium first meaningful paint, {name}: fresh server median {statistics.median(cold[name]):.3f} s "
            f"(max {max(cold[name]):.3f} s) -- {verdict} the {TARGET_PAINT_S:.0f} s target; "
            f"warm server median {statistics.median(warm[name]):.3f} s"
        )
    verdict = "meets" if rss_peak < TARGET_RSS_MIB else "MISSES"
    print(
        f"server RSS: {rss_idle:.0f} MiB idle, {rss_now:.0f} MiB after, peak {rss_peak:.0f} MiB "
        f"-- {verdict} the {TARGET_RSS_MIB} MiB target"
    )


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
