"""The dashboard server: downsampling, the pure ``*_impl`` functions, every route, the attack corpus, the token rule."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope.cli import main
from deepscope.errors import UnknownNameError
from deepscope.server import check_bind, create_app, is_loopback
from deepscope.server._api import NotFound, panels_impl, resolve_run, run_ids, runs_impl, version_impl
from deepscope.server._downsample import minmax_indices
from deepscope.server.panels import PANEL_MODULES, panels
from deepscope.server.panels.scalars import series_impl, tags_impl
from deepscope.store import RunReader, RunWriter

SCRIPT_NAME = "alpha <script>alert(1)</script>"
IMG_NAME = '<img src=x onerror="window.__xss=1">'
BIG = 1_000_000
SECRET = "TOPSECRET-outside-the-root"


def _write_run(folder, name, n=100, offset=0.0):
    with RunWriter(folder, name=name) as writer:
        for step in range(n):
            writer.add_scalars(step, {"train/loss": 1.0 / (step + 1) + offset, "eval/acc": step / n})
        writer.add_scalar("train/lr", 0, float("nan"))


def _bulk_series(folder, tag, values):
    """1 M ``add_scalar`` calls take ~9 s here; insert the same rows the writer's thread would, in one transaction."""
    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.executemany("INSERT INTO scalars VALUES (?, ?, 0.0, ?)", ((tag, i, v) for i, v in enumerate(values)))
    conn.close()


@pytest.fixture(scope="module")
def big_values():
    values = np.random.default_rng(0).normal(size=BIG)
    values[123_457] = 50.0  # a one-point spike in a million
    values[876_543] = -60.0
    return values


@pytest.fixture(scope="module")
def root(tmp_path_factory, big_values):
    base = tmp_path_factory.mktemp("runs")
    _write_run(base / "a", SCRIPT_NAME)
    _write_run(base / "group" / "b", IMG_NAME, offset=0.5)
    with RunWriter(base / "big", name="big") as writer:
        writer.add_scalar("small", 0, 1.0)
    _bulk_series(base / "big", "train/loss", big_values.tolist())
    outside = tmp_path_factory.mktemp("outside")
    _write_run(outside / "run", "outside")
    (outside / "secret.txt").write_text(SECRET)
    (base / "evil_dir").symlink_to(outside / "run", target_is_directory=True)  # a symlinked run folder
    (base / "evil_file").mkdir()
    (base / "evil_file" / "run.sqlite").symlink_to(outside / "run" / "run.sqlite")  # a symlinked store
    (base / "secret_link.txt").symlink_to(outside / "secret.txt")
    return base


@pytest.fixture(scope="module")
def client(root):
    return TestClient(create_app(root))


# ---------------------------------------------------------------------------------------- downsampling


def test_minmax_short_series_pass_through():
    assert minmax_indices(np.arange(10.0), 10).tolist() == list(range(10))
    assert minmax_indices(np.array([]), 8).tolist() == []


@pytest.mark.parametrize("n", [11, 1000, 12_345])
@pytest.mark.parametrize("points", [4, 5, 100])
def test_minmax_keeps_extremes_and_ends(n, points):
    values = np.random.default_rng(n + points).normal(size=n)
    keep = minmax_indices(values, points)
    assert len(keep) <= points
    assert np.all(np.diff(keep) > 0)  # sorted by step, no duplicates
    assert keep[0] == 0 and keep[-1] == n - 1
    assert np.argmin(values) in keep and np.argmax(values) in keep


def test_minmax_keeps_every_bucket_extreme():
    values = np.zeros(10_000)
    spikes = np.arange(37, 10_000, 500)  # one spike in each of 20 regions
    values[spikes] = np.arange(1, len(spikes) + 1)
    assert set(spikes) <= set(minmax_indices(values, 100).tolist())


def test_minmax_rejects_bad_arguments():
    with pytest.raises(ValueError, match=">= 4"):
        minmax_indices(np.zeros(10), 3)
    with pytest.raises(ValueError, match="one-dimensional"):
        minmax_indices(np.zeros((3, 3)), 4)


# ---------------------------------------------------------------------------------------- *_impl


def test_run_ids_list_runs_inside_root_only(root):
    ids = run_ids(root)
    assert sorted(ids) == ["a", "big", "group/b"]  # the symlinked run folder and store are left out
    assert ids["group/b"] == (root / "group" / "b").resolve()


def test_run_ids_of_a_single_run_root(root):
    assert run_ids(root / "a") == {"a": (root / "a").resolve()}


ATTACKS = [
    "",
    "..",
    "../a",
    "a/..",
    "a/../big",
    "%2e%2e",
    "..%2Fa",
    "group%2Fb",
    "/etc",
    str(Path("/").resolve()),
    "evil_dir",
    "evil_file",
    "a\x00",
    "a\\..",
    "./a",
    "a/",
]


@pytest.mark.parametrize("run_id", ATTACKS)
def test_resolve_run_refuses_attacks(root, run_id):
    with pytest.raises(NotFound):
        resolve_run(root, run_id)


def test_runs_impl(root):
    runs = {run["id"]: run for run in runs_impl(root)["runs"]}
    assert sorted(runs) == ["a", "big", "group/b"]
    assert runs["a"]["name"] == SCRIPT_NAME and runs["group/b"]["name"] == IMG_NAME  # data, verbatim
    assert runs["a"]["scalar_tags"] == 3 and runs["big"]["scalar_tags"] == 2
    assert runs["a"]["status"] == "finished" and runs["a"]["created"] > 0


def _series(root, run_id, tag, **query):
    with RunReader(resolve_run(root, run_id)) as reader:
        return series_impl(reader, tag=tag, **query)


def test_tags_impl(root):
    with RunReader(resolve_run(root, "group/b")) as reader:
        assert tags_impl(reader) == {"tags": ["eval/acc", "train/loss", "train/lr"]}


def test_series_short_is_exact(root):
    answer = _series(root, "a", "train/loss")
    assert answer["steps"] == list(range(100)) and answer["total"] == 100 and not answer["downsampled"]
    assert answer["values"] == pytest.approx([1.0 / (s + 1) for s in range(100)])
    ranged = _series(root, "a", "train/loss", start=10, end=19)
    assert ranged["steps"] == list(range(10, 20)) and ranged["total"] == 10
    assert _series(root, "a", "train/lr")["values"] == [None]  # NaN is not JSON


def test_series_errors(root):
    with pytest.raises(UnknownNameError, match="train/loss"):
        _series(root, "a", "train/los")
    with pytest.raises(ValueError, match="points"):
        _series(root, "a", "train/loss", points=3)
    with pytest.raises(ValueError, match="after"):
        _series(root, "a", "train/loss", start=5, end=4)


def test_million_points_bucketed_in_sqlite(root, big_values):
    t0 = time.perf_counter()
    answer = _series(root, "big", "train/loss", points=2000)
    elapsed = time.perf_counter() - t0
    print(f"\n1 M points: first view {elapsed:.3f} s -> {len(answer['steps'])} points")
    assert len(answer["steps"]) <= 2000 and len(answer["steps"]) == len(answer["values"])
    assert answer["total"] == BIG and answer["downsampled"]
    assert max(answer["values"]) == 50.0 and min(answer["values"]) == -60.0  # the true min and max
    assert 123_457 in answer["steps"] and 876_543 in answer["steps"]
    assert answer["steps"][0] == 0 and answer["steps"][-1] == BIG - 1
    assert answer["steps"] == sorted(set(answer["steps"]))
    # every bucket's extremes: the same points the in-memory algorithm keeps for equal-width step buckets
    edges = np.linspace(0, BIG, (2000 - 2) // 2 + 1).astype(int)
    for a, b in zip(edges[:-1:97], edges[1::97], strict=True):
        chunk = big_values[a:b]
        assert a + int(np.argmin(chunk)) in answer["steps"] and a + int(np.argmax(chunk)) in answer["steps"]
    zoom = _series(root, "big", "train/loss", start=500_000, end=500_999)
    assert zoom["steps"] == list(range(500_000, 501_000)) and not zoom["downsampled"]  # full resolution
    assert zoom["values"] == big_values[500_000:501_000].tolist()


def test_bucketing_keeps_non_finite_points(tmp_path):
    values = np.linspace(0.0, 1.0, 5000)
    values[1234], values[3000], values[4000] = np.nan, np.inf, -np.inf
    with RunWriter(tmp_path / "nan", name="nan") as writer:
        writer.add_scalar("x", 0, 0.0)
    _bulk_series(tmp_path / "nan", "y", [None if np.isnan(v) else v for v in values])
    with RunReader(tmp_path / "nan") as reader:
        series, total = reader.scalar_window("y", max_points=100)
    assert total == 5000 and len(series) <= 100
    kept = dict(zip(series.steps.tolist(), series.values.tolist(), strict=True))
    assert np.isnan(kept[1234]) and kept[3000] == np.inf and kept[4000] == -np.inf
    assert _series(tmp_path, "nan", "y", points=100)["values"].count(None) == 3


def test_sparse_steps_and_repeated_steps(tmp_path):
    with RunWriter(tmp_path / "sparse", name="sparse") as writer:
        for step in (0, 1, 2, 10_000, 10_001, 99_999):
            writer.add_scalar("s", step, float(step))
        writer.add_scalar("s", 2, -1.0)  # the same step twice: both kept
    with RunReader(tmp_path / "sparse") as reader:
        whole, total = reader.scalar_window("s", max_points=100)
        assert total == 7 and whole.steps.tolist() == [0, 1, 2, 2, 10_000, 10_001, 99_999]
        bucketed, total = reader.scalar_window("s", max_points=4)
        assert total == 7 and set(bucketed.steps.tolist()) >= {0, 99_999} and -1.0 in bucketed.values
        with pytest.raises(UnknownNameError):
            reader.scalar_window("nope")


def test_live_run_version_changes(tmp_path):
    _write_run(tmp_path / "live", "live", n=10)
    before = version_impl(tmp_path, "live")
    assert before["status"] == "finished"
    _bulk_series(tmp_path / "live", "train/loss", [0.1] * 5)
    after = version_impl(tmp_path, "live")
    assert after["version"] != before["version"]
    assert _series(tmp_path, "live", "train/loss")["total"] == 15
    with pytest.raises(NotFound):
        version_impl(tmp_path, "../live")


def test_panel_registry_and_availability(root):
    assert [panel.name for panel in panels()] == list(PANEL_MODULES)
    assert len({route.path for panel in panels() for route in panel.routes if panel.name == "scalars"}) == 2
    shown = panels_impl(root, "a")["panels"]
    assert shown[0] == {"name": "scalars", "title": "Scalars", "compare": True}
    with pytest.raises(NotFound):
        panels_impl(root, "evil_dir")


# ---------------------------------------------------------------------------------------- routes


def test_page_and_static(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "script-src 'self' 'unsafe-inline'" not in csp
    assert 'type="module"' in page.text and "http" not in page.text.replace("http-equiv", "")  # no CDN
    assert "textContent" in client.get("/static/ui.js").text
    for panel in PANEL_MODULES:  # every registered panel has its front-end module
        script = client.get(f"/static/panels/{panel}.js")
        assert script.status_code == 200 and "export async function render" in script.text, panel
        assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text, panel
    assert client.get("/static/style.css").status_code == 200
    plotly = client.get("/static/vendor/plotly-cartesian.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000 and b"plotly" in plotly.content[:2000]


def test_api_routes(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [run["id"] for run in runs] == ["a", "big", "group/b"]
    assert client.get("/api/scalars/tags", params={"run": "group/b"}).json() == {
        "run": "group/b",
        "tags": ["eval/acc", "train/loss", "train/lr"],
    }
    series = client.get("/api/scalars/series", params={"run": "group/b", "tag": "train/loss", "points": 10}).json()
    assert series["total"] == 100 and series["downsampled"] and len(series["steps"]) <= 10
    ranged = client.get("/api/scalars/series", params={"run": "a", "tag": "train/loss", "start": 90, "end": 200})
    assert ranged.json()["steps"] == list(range(90, 100))
    big = client.get("/api/scalars/series", params={"run": "big", "tag": "train/loss"}).json()
    assert len(big["steps"]) <= 2000 and max(big["values"]) == 50.0 and min(big["values"]) == -60.0
    missing = client.get("/api/scalars/series", params={"run": "a", "tag": "train/los"})
    assert missing.status_code == 404 and "train/loss" in missing.json()["detail"]  # close matches listed
    assert client.get("/api/scalars/series", params={"run": "a"}).status_code == 422  # no tag
    assert client.get("/api/scalars/series", params={"run": "a", "tag": "x", "points": 1}).status_code == 400
    backwards = {"run": "a", "tag": "train/loss", "start": 9, "end": 1}
    assert client.get("/api/scalars/series", params=backwards).status_code == 400
    assert client.get("/api/scalars/series", params={"run": "a", "tag": "t", "start": "x"}).status_code == 422
    assert client.get("/api/panels", params={"run": "a"}).json()["panels"][0]["name"] == "scalars"
    assert client.get("/api/version", params={"run": "a"}).json()["status"] == "finished"
    assert client.get("/api/nope").status_code == 404
    assert client.post("/api/scalars/series", params={"run": "a", "tag": "train/loss"}).status_code in (404, 405)
    assert client.delete("/api/runs").status_code in (404, 405)  # read-only


def test_oversize_query_is_refused(client):
    response = client.get("/api/scalars/series", params={"run": "a", "tag": "x" * 5000})
    assert response.status_code == 414


def test_no_cors(client):
    for path in ("/", "/api/runs", "/api/scalars/tags?run=a"):
        response = client.get(path, headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/api/runs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


ROUTE_ATTACKS = [
    "/api/scalars/tags?run=../a",
    "/api/scalars/tags?run=%2e%2e/a",
    "/api/scalars/tags?run=%2e%2e%2f%2e%2e%2fetc",
    "/api/scalars/tags?run=..%2F..%2Foutside",
    "/api/scalars/tags?run=/etc",
    "/api/scalars/tags?run=%2Fetc",
    "/api/scalars/tags?run=evil_dir",
    "/api/scalars/series?run=evil_dir&tag=train/loss",
    "/api/scalars/tags?run=evil_file",
    "/api/scalars/tags?run=a%00",
    "/api/scalars/tags?run=a%252e%252e",
    "/api/panels?run=../outside/run",
    "/api/version?run=evil_dir",
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/..%2F_api.py",
    "/static/panels/../../app.py",
    "/static/panels/%2e%2e%2f%2e%2e%2fapp.py",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/static/../../../../secret_link.txt",
    "/static/a%00.js",
    "/static/",
    "/static/missing.js",
]


@pytest.mark.parametrize("path", ROUTE_ATTACKS)
def test_attacks_get_404(client, path):
    response = client.get(path)
    assert response.status_code in (400, 404), path
    assert SECRET not in response.text and "import" not in response.text and "root:" not in response.text


# ---------------------------------------------------------------------------------------- token rule


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host):
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", ""])
def test_other_hosts_need_a_token(host):
    assert not is_loopback(host)
    with pytest.raises(ValueError, match="--token"):
        check_bind(host, None)
    with pytest.raises(ValueError, match="--token"):
        check_bind(host, "")
    check_bind(host, "s3cret")


def test_token_guards_the_api(root):
    client = TestClient(create_app(root, token="s3cret"))
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", params={"token": "wrong"}).status_code == 401
    assert client.get("/api/scalars/series", params={"run": "a", "tag": "train/loss"}).status_code == 401
    assert client.get("/api/runs", params={"token": "s3cret"}).status_code == 200
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/").status_code == 200  # the page reads the token from its own URL


def test_create_app_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_app(tmp_path / "missing")


# ---------------------------------------------------------------------------------------- CLI


@pytest.fixture
def fake_uvicorn(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def test_serve_binds_loopback_by_default(root, fake_uvicorn, capsys):
    assert main(["serve", str(root)]) == 0
    (app, kwargs), = fake_uvicorn  # fmt: skip
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 6007
    assert TestClient(app).get("/api/runs").status_code == 200
    out = capsys.readouterr()
    assert "http://127.0.0.1:6007/" in out.out and "WARNING" not in out.err


def test_serve_refuses_other_hosts_without_token(root, fake_uvicorn, capsys):
    assert main(["serve", str(root), "--host", "0.0.0.0"]) == 2
    assert not fake_uvicorn and "--token" in capsys.readouterr().err


def test_serve_other_host_with_token_warns(root, fake_uvicorn, capsys):
    assert main(["serve", str(root), "--host", "0.0.0.0", "--port", "7001", "--token", "s3cret"]) == 0
    (app, kwargs), = fake_uvicorn  # fmt: skip
    assert kwargs == {"host": "0.0.0.0", "port": 7001, "log_level": "warning"}
    assert "WARNING" in capsys.readouterr().err
    assert TestClient(app).get("/api/runs").status_code == 401
