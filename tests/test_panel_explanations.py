"""The dataset-explanations panel: each ``*_impl`` on a run and shard folder written by hand, routes, bad input."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from matplotlib import colormaps

from deepscope._attribution_plots import as_rgb, overlay
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.server import create_app
from deepscope.server._api import panels_impl
from deepscope.server.panels import PANEL_MODULES
from deepscope.server.panels.explanations import (
    MAX_EXAMPLES,
    PANEL,
    classes_impl,
    examples_impl,
    index_impl,
    item_impl,
)
from deepscope.store import RunReader, RunWriter

P = TAGS.EXPLAIN_DATASET
CLASS_NAMES = ["<b>circle</b>", "square", "triangle <i>"]
ITEMS, SHARD, SIZE = 10, 4, 8  # shards [0, 4), [4, 8) (failed) and [8, 10); maps 8 × 8
EXAMPLES = [0, 1, 9]  # recorded example positions


def _scaled(spatial):
    magnitude = np.abs(spatial)
    return (magnitude - magnitude.min()) / max(magnitude.max() - magnitude.min(), 1e-30)


def _shard_folder(folder: Path, maps, targets, scores, *, method: str, failed=()) -> dict:
    """Shards of ``SHARD`` items as ``explain_dataset`` writes them (the ``failed`` shard indices left out)."""
    folder.mkdir(parents=True)
    shards, failures = [], []
    for index, start in enumerate(range(0, len(maps), SHARD)):
        stop = min(start + SHARD, len(maps))
        if index in failed:
            failures.append(
                {"shard": index, "start": start, "stop": stop, "error": "<script>boom</script>", "attempts": 2}
            )
            continue
        name = f"shard-{index:05d}.npz"
        np.savez_compressed(
            folder / name, positions=np.arange(start, stop, dtype=np.int64), maps=maps[start:stop],
            targets=targets[start:stop], scores=scores[start:stop],
        )  # fmt: skip
        shards.append(
            {"index": index, "start": start, "stop": stop, "file": name, "bytes": (folder / name).stat().st_size}
        )
    manifest = {
        "format": 1, "method": method, "layer": "features.3", "target": "label", "params": {"relu": True},
        "items": len(maps), "map_shape": list(maps.shape[1:]), "dtype": "float32", "batch_size": 2,
        "shard_size": SHARD, "seed": 0, "backend": "ray", "seconds": 1.25, "shards": shards, "failed": failures,
        "retried": [], "versions": {},
    }  # fmt: skip
    (folder / "explanations.json").write_text(json.dumps(manifest))
    return manifest


def _record(writer: RunWriter, name: str, folder: Path, manifest: dict, maps, targets, *, examples=(), inputs=None):
    """What ``DatasetExplanation.record`` stores (common.md's contract), computed from the maps themselves."""
    covered = np.concatenate([np.arange(s["start"], s["stop"]) for s in manifest["shards"]])
    spatial = maps.sum(1) if maps.ndim == 4 else maps
    classes = np.unique(targets[covered])
    means = np.stack([np.mean([_scaled(spatial[i]) for i in covered if targets[i] == c], 0) for c in classes])
    total = sum(s["bytes"] for s in manifest["shards"])
    writer.set_meta(f"{P}/{name}", {
        "path": str(folder), "method": manifest["method"], "layer": manifest["layer"], "target": manifest["target"],
        "items": manifest["items"], "covered": len(covered),
        "shards": len(manifest["shards"]) + len(manifest["failed"]), "failed": manifest["failed"],
        "backend": manifest["backend"], "seconds": manifest["seconds"],
        "items_per_second": len(covered) / manifest["seconds"], "dtype": manifest["dtype"], "bytes": total,
        "params": manifest["params"], "class_names": CLASS_NAMES, "map_shape": manifest["map_shape"],
    })  # fmt: skip
    writer.add_tensor(f"{P}/{name}/classes", 0, classes.astype(np.int64))
    writer.add_tensor(f"{P}/{name}/class_counts", 0, np.array([(targets[covered] == c).sum() for c in classes]))
    writer.add_tensor(f"{P}/{name}/class_means", 0, means.astype(np.float32))
    if examples:
        rows = list(examples)
        writer.add_tensor(f"{P}/{name}/examples/inputs", 0, inputs[rows].astype(np.float32))
        writer.add_tensor(
            f"{P}/{name}/examples/maps", 0, np.stack([_scaled(spatial[i]) for i in rows]).astype(np.float32)
        )
        writer.add_tensor(f"{P}/{name}/examples/positions", 0, np.array(rows, np.int64))
        writer.add_tensor(f"{P}/{name}/examples/targets", 0, targets[rows].astype(np.int64))


def write_explained_run(root: Path) -> dict:
    """A run with four explanations: ``cam`` (a failed shard, examples), ``channels`` ((C, H, W) maps), ``gone``
    (its folder deleted) and ``replaced`` (its folder now holds another method's maps); and a run without any.

    Returns the arrays the shards hold, to check answers against.
    """
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(ITEMS, SIZE, SIZE)).astype(np.float32)
    channel_maps = rng.normal(size=(ITEMS, 3, SIZE, SIZE)).astype(np.float32)
    targets = np.array([0, 1, 0, 2, 1, 1, 0, 2, 1, 0], np.int64)
    scores = rng.normal(size=ITEMS).astype(np.float32)
    inputs = rng.uniform(size=(ITEMS, 3, SIZE, SIZE)).astype(np.float32)
    shards = root / "shards"
    cam = _shard_folder(shards / "cam", maps, targets, scores, method="gradcam", failed={1})
    channels = _shard_folder(shards / "channels", channel_maps, targets, scores, method="saliency")
    gone = _shard_folder(shards / "gone", maps, targets, scores, method="gradcam")
    replaced = _shard_folder(shards / "replaced", maps, targets, scores, method="gradcam")
    with RunWriter(root / "run", name="explained") as writer:
        _record(writer, "cam", shards / "cam", cam, maps, targets, examples=EXAMPLES, inputs=inputs)
        _record(writer, "channels", shards / "channels", channels, channel_maps, targets)
        _record(writer, "gone", shards / "gone", gone, maps, targets)
        _record(writer, "replaced", shards / "replaced", replaced, maps, targets)
    shutil.rmtree(shards / "gone")
    _shard_folder(shards / "other", maps, targets, scores, method="rise")
    shutil.rmtree(shards / "replaced")
    (shards / "other").rename(shards / "replaced")
    with RunWriter(root / "plain", name="plain") as writer:
        writer.add_scalar("train/loss", 0, 1.0)
    return {"maps": maps, "channel_maps": channel_maps, "targets": targets, "scores": scores, "inputs": inputs}


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    root = tmp_path_factory.mktemp("explained")
    return root, write_explained_run(root)


@pytest.fixture
def reader(explained):
    with RunReader(explained[0] / "run") as reader:
        yield reader


def _decode(uri):
    import matplotlib.image

    assert uri.startswith("data:image/png;base64,")
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")[..., :3]


def _inferno(values):
    return colormaps["inferno"](np.asarray(values))[..., :3]


def test_available_only_where_explanations_were_recorded(explained):
    root, _ = explained
    for run, expected in (("run", True), ("plain", False)):
        with RunReader(root / run) as reader:
            assert PANEL.available(reader) is expected
        assert ("explanations" in [p["name"] for p in panels_impl(root, run)["panels"]]) is expected
    assert PANEL_MODULES.index("explanations") == PANEL_MODULES.index("evaluation") + 1
    with RunReader(root / "plain") as reader:
        assert index_impl(reader) == {"explanations": []}


def test_index_summarises_each_explanation(reader):
    answer = {s["name"]: s for s in index_impl(reader)["explanations"]}
    assert list(answer) == ["cam", "channels", "gone", "replaced"]
    cam, meta = answer["cam"], reader.meta()[f"{P}/cam"]
    assert (cam["method"], cam["layer"], cam["target"], cam["backend"], cam["dtype"]) == (
        "gradcam", "features.3", "label", "ray", "float32",
    )  # fmt: skip
    assert (cam["items"], cam["covered"], cam["shards"], cam["bytes"]) == (ITEMS, 6, 3, meta["bytes"])
    assert cam["seconds"] == 1.25 and cam["items_per_second"] == pytest.approx(6 / 1.25)
    assert cam["failed"] == [{"shard": 1, "start": 4, "stop": 8, "error": "<script>boom</script>", "attempts": 2}]
    assert cam["params"] == [["relu", "true"]] and cam["map_shape"] == [SIZE, SIZE] and cam["examples"] == 3
    assert cam["folder"] == {"path": meta["path"], "available": True, "reason": None}
    assert answer["channels"]["map_shape"] == [3, SIZE, SIZE] and answer["channels"]["examples"] == 0
    assert answer["channels"]["failed"] == [] and answer["channels"]["covered"] == ITEMS
    assert not answer["gone"]["folder"]["available"] and "no longer holds" in answer["gone"]["folder"]["reason"]
    assert "another explanation (its method differ)" in answer["replaced"]["folder"]["reason"]


def test_class_means_are_drawn_on_one_scale(reader):
    answer = classes_impl(reader, name="cam")
    means = reader.tensor(f"{P}/cam/class_means", 0)
    assert [(c["class"], c["label"], c["count"]) for c in answer["classes"]] == [
        (0, CLASS_NAMES[0], 3), (1, CLASS_NAMES[1], 2), (2, CLASS_NAMES[2], 1),
    ]  # fmt: skip
    assert answer["vmax"] == pytest.approx(float(means.max()))
    for tile, mean in zip(answer["classes"], means, strict=True):  # one scale, 0 to the largest mean: never per class
        np.testing.assert_allclose(_decode(tile["mean"]), _inferno(mean / means.max()), atol=1 / 255 + 1e-6)
    with pytest.raises(UnknownNameError, match="unknown dataset explanation 'nope'"):
        classes_impl(reader, name="nope")


def test_examples_and_their_class_filter(reader, explained):
    arrays = explained[1]
    everything = examples_impl(reader, name="cam")
    assert [e["position"] for e in everything["examples"]] == EXAMPLES and everything["total"] == 3
    assert [(c["class"], c["count"]) for c in everything["classes"]] == [(0, 2), (1, 1), (2, 0)]
    assert everything["classes"][0]["label"] == CLASS_NAMES[0]
    for example in everything["examples"]:
        p = example["position"]
        rgb, heat = as_rgb(arrays["inputs"][p : p + 1])[0], _scaled(arrays["maps"][p])
        assert example["class"] == arrays["targets"][p] and example["label"] == CLASS_NAMES[arrays["targets"][p]]
        np.testing.assert_allclose(_decode(example["image"]), rgb, atol=1 / 255 + 1e-6)
        np.testing.assert_allclose(_decode(example["map"]), _inferno(heat), atol=1 / 255 + 1e-6)
        np.testing.assert_allclose(_decode(example["overlay"]), overlay(rgb, heat, alpha=0.6), atol=1 / 255 + 1e-6)
    zeros = examples_impl(reader, name="cam", cls=0)
    assert [e["position"] for e in zeros["examples"]] == [0, 9] and zeros["cls"] == 0 and zeros["total"] == 2
    none = examples_impl(reader, name="cam", cls=2)  # an explained class without recorded examples
    assert none["examples"] == [] and none["total"] == 0
    with pytest.raises(LookupError, match="class 7 is not explained in 'cam'; explained classes: 0, 1, 2"):
        examples_impl(reader, name="cam", cls=7)
    bare = examples_impl(reader, name="channels")
    assert bare["examples"] == [] and bare["total"] == 0 and [c["count"] for c in bare["classes"]] == [0, 0, 0]
    assert len(EXAMPLES) <= MAX_EXAMPLES


@pytest.mark.parametrize("position", [0, 3, 8, 9])
def test_item_map_comes_from_its_shard(reader, explained, position):
    arrays = explained[1]
    answer = item_impl(reader, name="cam", position=position)
    stored = arrays["maps"][position]
    assert answer["position"] == position and answer["shard"] == position // SHARD
    assert answer["file"] == f"shard-{position // SHARD:05d}.npz" and answer["shape"] == [SIZE, SIZE]
    assert answer["class"] == arrays["targets"][position] and answer["label"] == CLASS_NAMES[answer["class"]]
    assert answer["score"] == pytest.approx(float(arrays["scores"][position]))
    assert (answer["min"], answer["max"]) == pytest.approx((float(stored.min()), float(stored.max())))
    np.testing.assert_allclose(_decode(answer["map"]), _inferno(_scaled(stored)), atol=1 / 255 + 1e-6)
    if position in EXAMPLES:  # the recorded example's map is this very map
        example = next(e for e in examples_impl(reader, name="cam")["examples"] if e["position"] == position)
        assert answer["map"] == example["map"] and answer["overlay"] == example["overlay"]
        assert answer["image"] == example["image"]
    else:
        assert answer["image"] is None and answer["overlay"] is None


def test_per_channel_maps_are_summed_over_channels(reader, explained):
    stored = explained[1]["channel_maps"][6]
    answer = item_impl(reader, name="channels", position=6)
    assert answer["shape"] == [3, SIZE, SIZE] and answer["file"] == "shard-00001.npz"
    spatial = stored.astype(np.float64).sum(0)
    assert (answer["min"], answer["max"]) == pytest.approx((spatial.min(), spatial.max()))
    np.testing.assert_allclose(_decode(answer["map"]), _inferno(_scaled(spatial)), atol=1 / 255 + 1e-6)


def test_item_refuses_bad_positions_and_stale_folders(reader):
    for position in (-1, ITEMS, 10**12):
        with pytest.raises(ValueError, match="position must be between 0 and 9"):
            item_impl(reader, name="cam", position=position)
    for position in (True, 2.0, "3"):
        with pytest.raises(ValueError, match="position must be an integer"):
            item_impl(reader, name="cam", position=position)
    with pytest.raises(LookupError, match=r"item 5 has no map: shard 1 \(items 4–7\) failed after 2 attempt"):
        item_impl(reader, name="cam", position=5)
    with pytest.raises(LookupError, match=r"no longer holds a readable explanations\.json"):
        item_impl(reader, name="gone", position=0)
    with pytest.raises(LookupError, match="now holds another explanation"):
        item_impl(reader, name="replaced", position=0)
    with pytest.raises(UnknownNameError, match="Valid: cam, channels, gone, replaced"):
        item_impl(reader, name="../cam", position=0)


def _tampered(tmp_path, change) -> RunReader:
    """A run with one explanation of 8 items (two shards) whose manifest ``change(manifest, folder)`` then edits."""
    folder = tmp_path / "shards"
    rng = np.random.default_rng(1)
    maps, targets = rng.normal(size=(8, SIZE, SIZE)).astype(np.float32), np.zeros(8, np.int64)
    manifest = _shard_folder(folder, maps, targets, np.zeros(8, np.float32), method="gradcam")
    with RunWriter(tmp_path / "run") as writer:
        _record(writer, "cam", folder, manifest, maps, targets)
    change(manifest, folder)
    (folder / "explanations.json").write_text(json.dumps(manifest))
    return RunReader(tmp_path / "run")


def test_shard_files_come_only_from_the_manifest_inside_the_folder(tmp_path):
    secret = tmp_path / "secret.npz"
    np.savez(secret, positions=np.arange(4), maps=np.ones((4, SIZE, SIZE)), targets=np.zeros(4), scores=np.zeros(4))

    def escape(manifest, folder):
        manifest["shards"][0]["file"] = "../secret.npz"

    with _tampered(tmp_path / "escape", escape) as reader, pytest.raises(LookupError, match="unexpected shard file"):
        item_impl(reader, name="cam", position=0)
    with RunReader(tmp_path / "escape" / "run") as reader:
        assert index_impl(reader)["explanations"][0]["folder"]["available"] is False

    def link(manifest, folder):
        (folder / "shard-00000.npz").unlink()
        (folder / "shard-00000.npz").symlink_to(secret)

    with _tampered(tmp_path / "link", link) as reader:
        with pytest.raises(LookupError, match=r"shard file shard-00000\.npz is missing"):
            item_impl(reader, name="cam", position=1)
        assert item_impl(reader, name="cam", position=5)["file"] == "shard-00001.npz"

    def shifted(manifest, folder):
        manifest["shards"][0]["stop"], manifest["shards"][1]["start"] = 2, 2  # the second file holds items 4–7

    with _tampered(tmp_path / "shifted", shifted) as reader, pytest.raises(LookupError, match="does not hold item 3"):
        item_impl(reader, name="cam", position=3)


def test_routes_over_http(explained):
    client = TestClient(create_app(explained[0]))
    index = client.get("/api/explanations/index", params={"run": "run"})
    assert index.status_code == 200 and len(index.json()["explanations"]) == 4
    json.loads(index.text, parse_constant=lambda name: pytest.fail(f"{name} in a JSON answer"))
    assert client.get("/api/explanations/classes", params={"run": "run", "name": "cam"}).json()["run"] == "run"
    filtered = client.get("/api/explanations/examples", params={"run": "run", "name": "cam", "cls": 2})
    assert filtered.status_code == 200 and filtered.json()["total"] == 0
    assert client.get("/api/explanations/examples", params={"run": "run", "name": "cam"}).json()["total"] == 3
    item = client.get("/api/explanations/item", params={"run": "run", "name": "cam", "position": 9})
    assert item.status_code == 200 and item.json()["shard"] == 2
    expected = {"-1": 400, "10": 400, "5": 404, "abc": 422, "1.5": 422}
    for position, status in expected.items():
        got = client.get("/api/explanations/item", params={"run": "run", "name": "cam", "position": position})
        assert got.status_code == status, (position, got.text)
    assert "failed after 2 attempt" in client.get(
        "/api/explanations/item", params={"run": "run", "name": "cam", "position": 5}
    ).json()["detail"]  # fmt: skip
    assert client.get("/api/explanations/item", params={"run": "run", "name": "gone", "position": 0}).status_code == 404
    assert client.get("/api/explanations/classes", params={"run": "run", "name": "x"}).status_code == 404
    assert client.get("/api/explanations/examples", params={"run": "run", "name": "cam", "cls": 9}).status_code == 404
    assert client.get("/api/explanations/index", params={"run": "plain"}).json()["explanations"] == []


def test_what_explain_dataset_records_is_what_the_panel_reads(tmp_path):
    """The real writer (``explain_dataset`` + ``record``) against the panel: the contract both sides follow."""
    import torch

    from deepscope.datasets import shapes
    from deepscope.demos.shapes_cnn import ShapesCNN
    from deepscope.scale import explain_dataset

    data = shapes(40, 32, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ShapesCNN()
    result = explain_dataset(model, (data.images, data.labels), "gradcam", out=tmp_path / "shards", target="label",
                             shard_size=16)  # fmt: skip
    result.record(tmp_path / "run", data=(data.images, data.labels), class_names=data.class_names, examples=2)
    with RunReader(tmp_path / "run") as reader:
        (summary,) = index_impl(reader)["explanations"]
        assert (summary["name"], summary["items"], summary["covered"], summary["shards"]) == ("explanations", 40, 40, 3)
        assert summary["folder"]["available"] and summary["map_shape"] == list(result.map_shape)
        tiles = classes_impl(reader, name="explanations")["classes"]
        assert [t["count"] for t in tiles] == [result.class_counts[c] for c in sorted(result.class_counts)]
        assert [t["label"] for t in tiles] == [data.class_names[c] for c in sorted(result.class_counts)]
        examples = examples_impl(reader, name="explanations")["examples"]
        assert len(examples) == 2 * len(tiles)
        for example in examples:  # the map read back from its shard is the recorded example's map
            answer = item_impl(reader, name="explanations", position=example["position"])
            assert answer["map"] == example["map"] and answer["class"] == data.labels[example["position"]]
            stored = result.maps([example["position"]])[0]
            assert (answer["min"], answer["max"]) == pytest.approx((float(stored.min()), float(stored.max())))
            assert answer["file"] == f"shard-{example['position'] // 16:05d}.npz"


def test_maps_of_vector_inputs_are_drawn_as_strips(tmp_path):
    maps = np.random.default_rng(2).normal(size=(6, 12)).astype(np.float32)  # (N, L): a tabular model's maps
    targets = np.array([0, 1, 0, 1, 0, 1])
    manifest = _shard_folder(tmp_path / "shards", maps, targets, np.zeros(6, np.float32), method="saliency")
    with RunWriter(tmp_path / "run") as writer:
        _record(writer, "rows", tmp_path / "shards", manifest, maps, targets)
    with RunReader(tmp_path / "run") as reader:
        means = reader.tensor(f"{P}/rows/class_means", 0)
        tiles = classes_impl(reader, name="rows")["classes"]
        for tile, mean in zip(tiles, means, strict=True):
            np.testing.assert_allclose(_decode(tile["mean"]), _inferno(mean[None] / means.max()), atol=1 / 255 + 1e-6)
        answer = item_impl(reader, name="rows", position=4)
    assert answer["shape"] == [12] and answer["overlay"] is None
    np.testing.assert_allclose(_decode(answer["map"]), _inferno(_scaled(maps[4])[None]), atol=1 / 255 + 1e-6)
