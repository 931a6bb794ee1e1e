"""`deepscope explain-dataset`: a labelled image folder explained into shards, here and on Ray, recorded as a run."""

import json

import numpy as np
import pytest
import ray
import torch

from deepscope._images import LabelledImages, read_labelled
from deepscope._loading import load_model
from deepscope.cli import main
from deepscope.scale import explain_dataset, open_explanations
from deepscope.store import RunReader

SPEC = "dsnet_explain:build"  # a module name of its own: other CLI tests import other tiny models
SHARDS = {"explanations.json", "summary.npz", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A model factory importable from the working directory, a checkpoint, and 10 images in cat/ and dog/."""
    from PIL import Image

    (tmp_path / "dsnet_explain.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),"
        " nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)  # not the weights a fresh build() gets: the workers must receive these
    torch.save(load_model(SPEC).state_dict(), tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    for i in range(10):
        (tmp_path / "data" / ("cat", "dog")[i // 5]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / "data" / ("cat", "dog")[i // 5] / f"{i}.png"
        )
    return tmp_path


def _args(*extra):
    base = ["explain-dataset", SPEC, "--data", "data", "--weights", "net.pt", "--size", "16"]
    return [*base, "--shard-size", "4", "--batch-size", "3", *extra]


def _direct(root):
    """The maps explain_dataset writes when called on the same images without the CLI."""
    paths, texts, _ = read_labelled(root / "data")
    images = LabelledImages(paths, [("cat", "dog").index(t) for t in texts], size=16, raw=False)
    net = load_model(SPEC, weights=root / "net.pt")
    return explain_dataset(net, images, out=root / "direct", shard_size=4, batch_size=3)


def test_local_run_writes_shards_run_and_report(folder, capsys):
    assert main(_args("--out", "out")) == 0
    printed = capsys.readouterr().out
    out = folder / "out"
    assert {p.name for p in (out / "maps").iterdir()} == SHARDS
    assert (out / "report.html").is_file() and (out / "explanations" / "run.sqlite").is_file()
    manifest = json.loads((out / "maps" / "explanations.json").read_text())
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 4), (4, 8), (8, 10)]
    assert (manifest["method"], manifest["target"], manifest["backend"], manifest["failed"]) == (
        "gradcam", "predicted", "local", []
    )  # fmt: skip
    written, direct = open_explanations(out / "maps"), _direct(folder)
    assert np.array_equal(written.maps(range(10)), direct.maps(range(10)))
    assert np.array_equal(written.column("targets"), direct.column("targets"))
    bytes_ = sum(s.bytes for s in written.shards)
    assert "items=10 shards=3 backend=local " in printed and f"bytes={bytes_:,}" in printed
    assert "coverage: 10 items in 3 shards on local: all covered" in printed
    assert f"maps: {(out / 'maps').resolve()}" in printed and f"report: {(out / 'report.html').resolve()}" in printed
    with RunReader(out / "explanations") as reader:
        meta = reader.meta()["explain_dataset/explanations"]
    assert (meta["items"], meta["covered"], meta["shards"], meta["class_names"]) == (10, 10, 3, ["cat", "dog"])
    assert meta["path"] == str((out / "maps").resolve())

    assert main(_args("--out", "out", "--target", "label")) == 2  # out is not empty: nothing is replaced
    assert "out is not empty: pass --overwrite" in capsys.readouterr().err
    assert open_explanations(out / "maps").target == "predicted"

    assert main(_args("--out", "out", "--target", "label", "--overwrite")) == 0
    labelled = open_explanations(out / "maps")
    assert labelled.target == "label"
    assert labelled.column("targets").tolist() == [0] * 5 + [1] * 5  # the folders' classes, not the predictions
    assert labelled.class_counts == {0: 5, 1: 5}

    assert main(_args("--out", "out", "--target", "label", "--class-names", "dog,cat", "--overwrite")) == 0
    assert open_explanations(out / "maps").column("targets").tolist() == [1] * 5 + [0] * 5  # the model's order
    with RunReader(out / "explanations") as reader:
        assert reader.meta()["explain_dataset/explanations"]["class_names"] == ["dog", "cat"]


@pytest.fixture
def ray_session():
    """Shut down the Ray instance the command starts, unless one was already open before the test."""
    started = not ray.is_initialized()
    yield
    if started and ray.is_initialized():
        ray.shutdown()


def test_ray_run_equals_local_and_a_failed_shard_exits_1(folder, ray_session, capsys):
    (folder / "data" / "dog" / "zz.png").write_bytes(b"not an image")  # item 10: shard 2 (items 8-10) fails
    assert main(_args("--out", "ray", "--backend", "ray", "--workers", "2")) == 1
    printed = capsys.readouterr().out
    assert "items=11 shards=3 backend=ray " in printed
    assert (
        "coverage: 11 items in 3 shards on ray: 3 items not covered — shard 2 (items 8–10) after 2 attempts" in printed
    )
    assert f"report: {(folder / 'ray' / 'report.html').resolve()}" in printed  # all printed before the exit status
    written = open_explanations(folder / "ray" / "maps")
    assert {p.name for p in written.path.iterdir()} == SHARDS - {"shard-00002.npz"}
    assert written.coverage.missing().tolist() == [8, 9, 10]
    (folder / "data" / "dog" / "zz.png").unlink()
    direct = _direct(folder)  # the 10 readable images, here: the first 8 are the ones the workers explained
    np.testing.assert_allclose(written.maps(range(8)), direct.maps(range(8)), rtol=1e-5, atol=1e-7)
    assert np.array_equal(written.column("targets"), direct.column("targets")[:8])
    with RunReader(folder / "ray" / "explanations") as reader:
        meta = reader.meta()["explain_dataset/explanations"]
    assert (meta["backend"], meta["covered"], [f["shard"] for f in meta["failed"]]) == ("ray", 8, [2])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "spark"], "unknown backend 'spark'; valid: 'local', 'ray'"),
        (["--method", "gradcm"], "gradcam"),
        (["--target", "first"], "--target 'first': use predicted, label or a class index"),
        (["--dtype", "int8"], "unknown dtype 'int8'; valid: float32, float16"),
    ],
)
def test_bad_input_is_one_line(folder, capsys, extra, message):
    assert main(_args("--out", "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (folder / "bad" / "maps").exists()
