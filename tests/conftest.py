"""Shared fixtures: tiny models built deterministically, and a seeded generator.

Models are built inside ``torch.random.fork_rng`` with a fixed seed, so their weights are
reproducible and building them never disturbs the global RNG of other tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from torch import nn

from deepscope.demos import toy2d
from deepscope.scale._ray import OFFLINE

for _name, _value in OFFLINE.items():  # before any test module imports ray: a private instance stays off the network
    os.environ.setdefault(_name, _value)


class TinyCNN(nn.Module):
    """conv-bn-relu(inplace)-pool-conv-relu, global average pool, linear head (10 classes)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 8, H/2, W/2)
        return self.fc(self.pool(x).flatten(1))  # (N, num_classes)


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny_cnn() -> nn.Module:
    return _seeded(TinyCNN)


def build_demo_mlp() -> nn.Module:
    """The seed's training-dynamics network: 2 -> Dense(100)+ReLU -> Dense(2) -> Dense(1)+sigmoid."""
    return toy2d.make_model(seed=0)


@pytest.fixture(scope="session")
def model_builders() -> dict[str, Callable[[], nn.Module]]:
    """Builders of the tiny models, for module-scoped caches (deepcopy the result per test)."""
    return {"tiny_cnn": build_tiny_cnn, "demo_mlp": build_demo_mlp}


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed; pass it to every random call in tests."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def tiny_cnn() -> nn.Module:
    return build_tiny_cnn()


@pytest.fixture
def tiny_images(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=generator)


@pytest.fixture
def demo_mlp() -> nn.Module:
    return build_demo_mlp()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``cuda`` tests are deselected by ``make test``; selected explicitly without a GPU they skip loudly."""
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs CUDA (run `make test-gpu` on a machine with a GPU)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Under CI (``CI=true``) a skipped test is a failure: nothing may silently not run."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() in ("1", "true", "yes") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is not allowed: {report.longrepr}"


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's headless chromium driven by playwright (``make test`` installs it; never ``playwright install``).

    Missing chromium or playwright skips the browser tests with the reason, and fails them under ``CI=true``.
    """
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the Python package playwright is not installed (pip install -e '.[test]')"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium, or run `make test`)"
    if missing is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run under CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def chromium_page(chromium_browser):
    """A fresh page in its own browser context (no state, routes or cookies shared between tests)."""
    context = chromium_browser.new_context()
    context.set_default_timeout(5_000)  # a broken page fails in seconds, not after playwright's 30 s
    yield context.new_page()
    context.close()


@pytest.fixture(scope="session")
def tour_root(tmp_path_factory) -> Path:
    """The quick tour's runs (every demo, about 40 s once per session): real data for the dashboard's panels."""
    from deepscope.demos import run_demo

    return run_demo("tour", tmp_path_factory.mktemp("tour"), quick=True).out_dir


@contextlib.contextmanager
def serve_dashboard(root: Path, **options):
    """Run ``create_app(root, **options)`` under uvicorn on a free loopback port; yields its base URL."""
    import socket
    import threading

    import uvicorn

    from deepscope.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(root, **options), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@pytest.fixture(scope="session")
def tour_dashboard(tour_root):
    """The dashboard serving the quick tour's runs: its base URL (``http://127.0.0.1:<port>``)."""
    pytest.importorskip("fastapi")
    with serve_dashboard(tour_root) as url:
        yield url


def _open_panel(page, url: str, run: str, panel: str, *, timeout: float = 10_000):
    """Open the dashboard at ``run``'s ``panel`` tab and wait until the panel has rendered.

    Returns ``(errors, requests)``: lists that keep collecting console errors and requested URLs.
    """
    errors, requests = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requests.append(request.url))
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{url}/#run={quote(run, safe='')}&panel={panel}")
    page.wait_for_selector(f"body[data-panel-ready={panel}]", timeout=timeout)
    return errors, requests


@pytest.fixture
def open_panel():
    """``open_panel(page, url, run, panel) -> (console_errors, requested_urls)``: see :func:`_open_panel`."""
    return _open_panel
