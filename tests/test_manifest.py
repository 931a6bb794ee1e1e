"""Split manifests: stable digests, verification against new data and files on disk, run round trip, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from deepscope._hashing import duplicates_across
from deepscope._manifest import SplitManifest, split_manifest, verify_files
from deepscope._tags import TAGS
from deepscope.errors import UnknownNameError
from deepscope.store import RunReader, RunWriter


def _arrays():
    rng = np.random.default_rng(0)
    return {"train": rng.normal(size=(20, 3)).astype(np.float32), "test": rng.normal(size=(6, 3)).astype(np.float32)}


@pytest.fixture
def images(tmp_path, monkeypatch):
    """Eight small files in tmp_path/img (the current folder is tmp_path): relative paths for train and test."""
    (tmp_path / "img").mkdir()
    paths = []
    for i in range(8):
        (tmp_path / "img" / f"img_{i:03d}.png").write_bytes(bytes([i]) * (10 + i))
        paths.append(f"img/img_{i:03d}.png")
    monkeypatch.chdir(tmp_path)
    return {"train": paths[:5], "test": paths[5:]}


def test_manifest_is_stable_across_processes(images, tmp_path):
    here = split_manifest({**images, **{f"array_{k}": v for k, v in _arrays().items()}})
    code = (
        "import json, numpy as np\n"
        "from deepscope._manifest import split_manifest\n"
        "rng = np.random.default_rng(0)\n"
        "arrays = {'train': rng.normal(size=(20, 3)).astype(np.float32), "
        "'test': rng.normal(size=(6, 3)).astype(np.float32)}\n"
        f"paths = {json.dumps(images)}\n"
        "m = split_manifest({**paths, **{f'array_{k}': v for k, v in arrays.items()}})\n"
        "print(json.dumps({'digest': m.digest, 'splits': {n: s.digest for n, s in m.splits.items()}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    there = json.loads(done.stdout)
    assert there["splits"] == {name: split.digest for name, split in here.splits.items()}
    assert there["digest"] == here.digest
    assert len({split.digest for split in here.splits.values()}) == 4  # the digests do depend on the data
    assert here.splits["train"].paths == tuple(images["train"])  # relative paths stay relative


def test_verify_paths(images, tmp_path):
    manifest = split_manifest(images)
    same = manifest.verify(images)
    assert same.identical and "train: identical (5 items" in same.summary()

    (tmp_path / images["test"][1]).write_bytes(b"edited")
    changed = manifest.verify(images)
    test = changed.splits[1]
    assert not changed.identical and changed.splits[0].identical
    assert (test.changed, test.added, test.removed, test.reordered) == (1, 0, 0, False)
    assert "test: 1 changed (img/img_006.png)" in changed.summary()

    more = manifest.verify({**images, "train": [*images["train"], images["test"][0]]})
    assert (more.splits[0].added, more.splits[0].examples["added"]) == (1, (images["test"][0],))
    fewer = manifest.verify({**images, "train": images["train"][1:]})
    assert (fewer.splits[0].removed, fewer.splits[0].examples["removed"]) == (1, (images["train"][0],))
    shuffled = manifest.verify({**images, "train": images["train"][::-1]})
    train = shuffled.splits[0]
    assert train.reordered and not shuffled.identical and (train.added, train.removed, train.changed) == (0, 0, 0)
    assert "train: reordered" in shuffled.summary()


def test_verify_arrays():
    data = _arrays()
    manifest = split_manifest(data)
    assert manifest.verify(_arrays()).identical

    edited = _arrays()
    edited["train"][3, 0] += 1.0  # by index, a changed row is one item removed and one added
    train = manifest.verify(edited).splits[0]
    assert (train.added, train.removed, train.examples["added"], train.examples["removed"]) == (1, 1, (3,), (3,))

    grown = manifest.verify({**data, "test": np.concatenate([data["test"], data["train"][:2]])})
    assert (grown.splits[1].added, grown.splits[1].removed, grown.splits[1].examples["added"]) == (2, 0, (6, 7))
    shrunk = manifest.verify({**data, "test": data["test"][:-1]})
    assert (shrunk.splits[1].removed, shrunk.splits[1].examples["removed"]) == (1, (5,))
    reordered = manifest.verify({**data, "train": data["train"][::-1]})
    assert reordered.splits[0].reordered and not reordered.identical
    assert "test: 1 removed (#5)" in shrunk.summary()


def test_verify_reports_missing_and_new_splits():
    data = _arrays()
    check = split_manifest(data).verify({"train": data["train"], "extra": data["test"]})
    assert (check.missing, check.new, check.identical) == (("test",), ("extra",), False)
    assert "test: missing" in check.summary() and "extra: new" in check.summary()


def test_verify_files_after_editing_and_deleting(images, tmp_path, monkeypatch):
    manifest = split_manifest(images)
    monkeypatch.chdir(tmp_path / "img")  # the current folder no longer matters once base is given
    assert verify_files(manifest, base=tmp_path).identical

    (tmp_path / images["train"][2]).write_bytes(b"new content")
    check = verify_files(manifest, base=tmp_path)
    train, test = check.splits
    assert (train.changed, train.added, train.removed, train.examples["changed"]) == (1, 0, 0, (images["train"][2],))
    assert test.identical and not check.identical

    (tmp_path / images["test"][0]).unlink()
    monkeypatch.chdir(tmp_path)
    test = verify_files(manifest).splits[1]  # relative to the current folder by default
    assert (test.removed, test.changed, test.examples["removed"]) == (1, 0, (images["test"][0],))
    assert f"test: 1 removed ({images['test'][0]})" in verify_files(manifest).summary()


def test_verify_files_cannot_check_index_splits(images):
    check = verify_files(split_manifest({"train": images["train"], "array": _arrays()["test"]}))
    assert check.unchecked == ("array",) and check.splits[0].identical and not check.identical
    assert "array: not checkable without the data" in check.summary()


def test_record_and_load_round_trip(images, tmp_path):
    run = tmp_path / "run"
    writer = RunWriter(run, versions={"torch": "9.9"})
    writer.add_scalar("train/loss", 0, 1.0)
    writer.set_status("failed")
    writer.close()
    manifest = split_manifest({**images, "array": _arrays()["train"]})
    manifest.record(run)

    loaded = SplitManifest.load(run)
    assert loaded == manifest and loaded.digest == manifest.digest
    assert loaded.paths("train") == images["train"]
    assert loaded.verify({**images, "array": _arrays()["train"]}).identical
    with RunReader(run) as reader:
        meta, info = reader.meta(), reader.info
    assert meta[f"{TAGS.MANIFEST}/splits"] == ["train", "test", "array"]
    assert meta[f"{TAGS.MANIFEST}/split/train"]["paths"] == images["train"]
    assert "paths" not in meta[f"{TAGS.MANIFEST}/split/array"]
    assert (info.status, info.versions["torch"]) == ("failed", "9.9")  # recording keeps what the run was


def test_load_detects_a_damaged_manifest(images, tmp_path):
    run = split_manifest(images).record(tmp_path / "run")
    with RunReader(run) as reader:
        entry = reader.meta()[f"{TAGS.MANIFEST}/split/test"]
    with RunWriter(run) as writer:
        writer.set_meta(f"{TAGS.MANIFEST}/split/test", {**entry, "hashes": entry["hashes"][::-1]})
    with pytest.raises(ValueError, match="damaged: split 'test'"):
        SplitManifest.load(run)


def test_duplicates_across_splits():
    data = _arrays()
    splits = {"train": data["train"], "val": np.concatenate([data["train"][:3], data["test"]]), "test": data["test"]}
    manifest = split_manifest(splits)
    assert manifest.duplicates == {("train", "val"): 3, ("val", "test"): 6}
    assert manifest.duplicates == {pair: count for pair, (count, _) in duplicates_across(splits).items()}
    assert "3 val items are in train" in manifest.summary()
    assert split_manifest(data).duplicates == {}


def test_clear_errors(images, tmp_path):
    run = tmp_path / "empty_run"
    with RunWriter(run) as writer:
        writer.add_scalar("train/loss", 0, 1.0)
    with pytest.raises(ValueError, match="holds no split manifest"):
        SplitManifest.load(run)
    manifest = split_manifest({"train": images["train"], "array": _arrays()["test"]})
    with pytest.raises(ValueError, match="identified by position"):
        manifest.paths("array")
    with pytest.raises(UnknownNameError, match="unknown split 'tset'"):
        manifest.paths("tset")
    with pytest.raises(TypeError, match="single path"):
        split_manifest({"train": "img"})
    with pytest.raises(TypeError, match="non-empty mapping"):
        split_manifest({})


def test_item_hashes_see_whole_feature_rows_and_the_input_of_records():
    from deepscope._hashing import item_hashes

    rows = item_hashes([[1, 2], [1, 3], [1, 2]])  # plain feature rows: the whole row identifies the item
    assert rows[0] != rows[1] and rows[0] == rows[2]
    a, b = np.zeros(3), np.ones(3)
    records = item_hashes([{"label": 0, "x": a}, {"label": 0, "x": b}, {"x": a, "label": 1}])
    assert records[0] != records[1] and records[0] == records[2]  # the input decides, not the label
    pairs = item_hashes([(a, 0), (b, 0), (a, 1)])
    assert pairs[0] != pairs[1] and pairs[0] == pairs[2]
    unnamed = item_hashes([{"u": a, "v": 0}, {"v": 0, "u": b}, {"v": 0, "u": a}])  # no input key: every entry
    assert unnamed[0] != unnamed[1] and unnamed[0] == unnamed[2]


def test_the_verify_split_command_reports_a_changed_file_and_exits_1(tmp_path, capsys, monkeypatch):
    from deepscope.cli import main
    from deepscope.repro import split_manifest

    monkeypatch.chdir(tmp_path)
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(name)
    split_manifest({"train": ["a.txt", "b.txt"], "test": ["c.txt"]}).record(tmp_path / "run")
    assert main(["verify-split", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.startswith("identical to the split manifest")
    (tmp_path / "c.txt").write_text("changed")
    assert main(["verify-split", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "test: 1 changed (c.txt)" in out and "train: identical (2 items" in out
    assert main(["verify-split", str(tmp_path)]) == 2  # a folder without a run
