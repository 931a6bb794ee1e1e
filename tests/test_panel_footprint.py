"""The reproducibility & footprint panel: environment, recipe, footprint and manifest of tour and hand-made runs."""

from __future__ import annotations

import json
import shlex
import sqlite3

import numpy as np
import pytest

from deepscope._manifest import split_manifest
from deepscope._tags import TAGS
from deepscope.footprint import CAR_G_CO2_PER_KM, SMARTPHONE_CHARGE_KWH, estimate
from deepscope.server.panels.footprint import MAX_ITEMS, PANEL, split_impl, summary_impl
from deepscope.store import RunReader, RunWriter

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from deepscope.server import create_app


def _rows(summary: dict, title: str) -> dict[str, str]:
    (part,) = [p for p in summary["environment"] if p["title"] == title]
    return dict(part["rows"])


@pytest.fixture(scope="module")
def client(tour_root):
    return TestClient(create_app(tour_root))


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """A run with an estimated footprint (France) and a manifest of file splits sharing one file."""
    base = tmp_path_factory.mktemp("footprint")
    for name in ("a.txt", "b.txt", "c.txt"):
        (base / name).write_text(name)
    folder = base / "run"
    with RunWriter(folder, name="handmade") as writer:
        writer.set_meta(TAGS.FOOTPRINT, estimate(7200, power_w=100, country="FRA", pue=1.58).as_dict())
    paths = [str(base / n) for n in ("a.txt", "b.txt", "c.txt")]
    split_manifest({"train": paths, "test": [paths[2]]}).record(folder)
    return folder


def test_summary_of_a_run_with_everything(tour_root):
    with RunReader(tour_root / "digits" / "cnn") as reader:
        answer = summary_impl(reader)
        meta = reader.meta()
    env, stored = meta[TAGS.ENVIRONMENT], meta[TAGS.FOOTPRINT]
    code, seed, software = _rows(answer, "Code"), _rows(answer, "Seed & determinism"), _rows(answer, "Software")
    if env.get("git"):
        assert code["git commit"] == env["git"]["commit"] and f"git checkout {env['git']['commit']}" in answer["recipe"]
    assert code["command"] == shlex.join(env["argv"]) and shlex.join(env["argv"][1:]) in answer["recipe"]
    assert seed["seed"] == str(env["seed"]["seed"])
    assert seed["torch deterministic algorithms"] == ("yes" if env["torch"]["deterministic_algorithms"] else "no")
    for library, version in env["versions"].items():
        assert software[library] == version
    assert f"torch=={env['versions']['torch']}" in answer["recipe"]
    assert _rows(answer, "Hardware")["CPU count"] == str(env["cpu_count"])

    cost = answer["footprint"]
    assert cost["error"] is None and cost["method"] == stored["method"]
    for key in ("seconds", "energy_kwh", "co2_g", "water_l"):
        assert cost[key] == stored[key]
    assert cost["measured"] == stored["method"].startswith("codecarbon")
    assert [c["name"] for c in cost["constants"]] == list(stored["constants"])
    sources = {c["name"]: c["source"] for c in cost["constants"]}
    assert sources["pue"] and sources["water_l_per_kwh"] and sources["grid_intensity_g_per_kwh"]
    car, phone = cost["equivalents"]
    assert car["amount"] == pytest.approx(stored["co2_g"] / CAR_G_CO2_PER_KM)
    assert phone["amount"] == pytest.approx(stored["energy_kwh"] / SMARTPHONE_CHARGE_KWH)

    manifest = answer["manifest"]
    assert manifest["error"] is None and manifest["digest"] == meta[f"{TAGS.MANIFEST}/digest"]
    assert [s["name"] for s in manifest["splits"]] == meta[f"{TAGS.MANIFEST}/splits"] == ["train", "held out"]
    for split in manifest["splits"]:
        entry = meta[f"{TAGS.MANIFEST}/split/{split['name']}"]
        assert (split["count"], split["digest"]) == (len(entry["hashes"]), entry["digest"])
        assert split["kind"] == "items by index"
    assert "verify(" in answer["verify"] and "'held out'" in answer["verify"]


def test_summary_of_a_run_with_an_environment_only(tour_root):
    with RunReader(tour_root / "toy2d" / "seed-0") as reader:
        answer = summary_impl(reader)
        env = reader.meta()[TAGS.ENVIRONMENT]
    assert answer["footprint"] is None and answer["manifest"] is None and answer["verify"] is None
    assert [p["title"] for p in answer["environment"]] == ["Code", "Seed & determinism", "Software", "Hardware"]
    assert _rows(answer, "Software")["numpy"] == env["versions"]["numpy"]


def test_split_items(tour_root):
    with RunReader(tour_root / "digits" / "cnn") as reader:
        entry = reader.meta()[f"{TAGS.MANIFEST}/split/held out"]
        first = split_impl(reader, split="held out")
        tail = split_impl(reader, split="held out", offset=290, limit=50)
        with pytest.raises(KeyError, match="held out"):  # UnknownNameError lists the splits
            split_impl(reader, split="validation")
        for offset, limit in [(-1, 20), (297, 20), (0, 0), (0, MAX_ITEMS + 1)]:
            with pytest.raises(ValueError, match=r"offset|limit"):
                split_impl(reader, split="held out", offset=offset, limit=limit)
    assert [item["hash"] for item in first["items"]] == entry["hashes"][:20]
    assert [item["index"] for item in tail["items"]] == list(range(290, 297))
    assert [item["hash"] for item in tail["items"]] == entry["hashes"][290:]
    assert first["count"] == 297 and first["digest"] == entry["digest"] and first["items"][0]["path"] is None
    with RunReader(tour_root / "toy2d" / "seed-0") as reader, pytest.raises(LookupError, match="no split manifest"):
        split_impl(reader, split="train")


def test_handmade_estimate_and_file_splits(handmade):
    with RunReader(handmade) as reader:
        answer = summary_impl(reader)
        items = split_impl(reader, split="train")
        meta = reader.meta()
    cost = answer["footprint"]
    assert not cost["measured"] and cost["method"].startswith("estimate: 100.0 W")
    assert cost["energy_kwh"] == pytest.approx(100 * 7200 * 1.58 / 3.6e6)
    assert cost["co2_g"] == pytest.approx(cost["energy_kwh"] * 56.039)
    sources = {c["name"]: c["source"] for c in cost["constants"]}
    assert "global_energy_mix" in sources["grid_intensity_g_per_kwh"] and "Uptime" in sources["pue"]
    manifest = answer["manifest"]
    assert [(s["name"], s["count"], s["kind"]) for s in manifest["splits"]] == [
        ("train", 3, "files"),
        ("test", 1, "files"),
    ]
    assert manifest["duplicates"] == [{"first": "train", "second": "test", "count": 1}]
    assert answer["verify"].startswith("deepscope verify-split")
    assert [i["path"] for i in items["items"]] == meta[f"{TAGS.MANIFEST}/split/train"]["paths"]


def test_damaged_manifest_and_missing_environment(handmade, tmp_path):
    folder = tmp_path / "damaged"
    with RunWriter(folder) as writer:
        writer.add_scalar("train/loss", 0, 1.0)
    split_manifest({"train": np.arange(6).reshape(3, 2)}).record(folder)
    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps("0" * 64), f"{TAGS.MANIFEST}/digest"))
        conn.execute("DELETE FROM meta WHERE key = ?", (TAGS.ENVIRONMENT,))
    conn.close()
    with RunReader(folder) as reader:
        answer = summary_impl(reader)
        assert PANEL.available(reader)  # a manifest alone is enough
        with pytest.raises(ValueError, match="damaged"):
            split_impl(reader, split="train")
    assert "damaged" in answer["manifest"]["error"] and answer["manifest"]["splits"] == []
    assert answer["environment"] is None and answer["recipe"] is None
    conn = sqlite3.connect(folder / "run.sqlite")
    with conn:
        conn.execute("DELETE FROM meta WHERE key LIKE 'repro/%'")
    conn.close()
    with RunReader(folder) as reader:
        assert not PANEL.available(reader)


def test_every_tour_run_has_the_panel(tour_root):
    from deepscope.store import find_runs

    runs = find_runs(tour_root)
    assert len(runs) >= 12  # every demo of the tour
    for folder in runs:
        with RunReader(folder) as reader:
            assert PANEL.available(reader), folder
            assert summary_impl(reader)["environment"] is not None


def test_routes(client, tour_root):
    answer = client.get("/api/footprint/summary", params={"run": "digits/cnn"})
    assert answer.status_code == 200
    body = json.loads(answer.text, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))
    with RunReader(tour_root / "digits" / "cnn") as reader:
        assert {k: v for k, v in body.items() if k != "run"} == summary_impl(reader)
    items = client.get("/api/footprint/split", params={"run": "digits/cnn", "split": "train", "offset": 10, "limit": 5})
    assert [i["index"] for i in items.json()["items"]] == [10, 11, 12, 13, 14]
    unknown = client.get("/api/footprint/split", params={"run": "digits/cnn", "split": "trian"})
    assert unknown.status_code == 404 and "train" in unknown.json()["detail"]
    for params in ({"offset": 5000}, {"offset": -1}, {"limit": 0}, {"limit": 10_000}):
        bad = client.get("/api/footprint/split", params={"run": "digits/cnn", "split": "train", **params})
        assert bad.status_code == 400 and ("offset" in bad.json()["detail"] or "limit" in bad.json()["detail"])
    assert client.get("/api/footprint/split", params={"run": "digits/cnn"}).status_code == 422
    nothing = client.get("/api/footprint/split", params={"run": "toy2d/seed-0", "split": "train"})
    assert nothing.status_code == 404 and "no split manifest" in nothing.json()["detail"]
    assert client.get("/api/footprint/summary", params={"run": "../digits/cnn"}).status_code == 404
    panels = client.get("/api/panels", params={"run": "attention/minilm"}).json()["panels"]
    assert {"name": "footprint", "title": "Reproducibility & footprint", "compare": False} in panels
