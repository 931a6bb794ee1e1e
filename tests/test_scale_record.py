"""A dataset explanation recorded in a run: the exact store layout, its examples, overwriting, the report, the demo."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.datasets import shapes
from deepscope.demos import run_demo
from deepscope.demos.shapes_cnn import ShapesCNN
from deepscope.report import build_report
from deepscope.scale import Coverage, ShardFailure, explain_dataset
from deepscope.store import RunReader

K = "explain_dataset/explanations"
NAMES = ["<b>x</b>", "square", "triangle", "cross"]


def random_cnn(images):
    """A seeded untrained shapes CNN whose batch norms saw ``images`` (bn3's shipped -2 bias would silence it)."""
    torch.manual_seed(0)
    model = ShapesCNN()
    nn.init.zeros_(model.features.bn3.bias)
    with torch.no_grad():
        model.train()(images)
    return model.eval()


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """Grad-CAM of 70 shapes for their labels, in three shards."""
    data = shapes(70, 32, seed=5)
    maps = tmp_path_factory.mktemp("maps")
    model = random_cnn(data.images)
    result = explain_dataset(
        model, (data.images, data.labels), "gradcam", out=maps, target="label", shard_size=30, batch_size=16
    )
    return result, data


def scaled(maps):
    """Each map's |m| min–max scaled to [0, 1], computed here independently of deepscope."""
    m = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), -1)
    assert (np.ptp(m, 1) > 0).all(), "a constant map would make the comparison trivial"
    low, high = m.min(1, keepdims=True), m.max(1, keepdims=True)
    return ((m - low) / (high - low)).reshape(np.shape(maps))


def test_the_record_holds_exactly_the_layout_with_the_results_values(explained, tmp_path):
    result, data = explained
    run = result.record(tmp_path / "run", data=(data.images, data.labels), class_names=NAMES, examples=2)
    assert run == tmp_path / "run"
    manifest = json.loads((result.path / "explanations.json").read_text())
    with RunReader(run) as reader:
        meta = reader.meta()
        assert reader.info.name == "run" and reader.info.config == {"task": "explain_dataset"}  # the folder's name
        assert sorted(reader.tensor_tags()) == sorted(
            f"{K}/{part}" for part in ("classes", "class_counts", "class_means", "examples/inputs", "examples/maps",
                                       "examples/positions", "examples/targets")
        )  # fmt: skip
        assert meta[K] == {
            "path": str(result.path.resolve()), "method": "gradcam", "layer": result.layer, "target": "label",
            "items": 70, "covered": 70, "shards": 3, "failed": [], "backend": "local",
            "seconds": manifest["seconds"], "items_per_second": 70 / manifest["seconds"], "dtype": "float32",
            "bytes": sum((result.path / f"shard-{i:05d}.npz").stat().st_size for i in range(3)),
            "params": result.params, "class_names": NAMES, "map_shape": [32, 32],
        }  # fmt: skip
        classes = reader.tensor(f"{K}/classes", 0)
        assert classes.dtype == np.int64 and classes.tolist() == [0, 1, 2, 3]
        counts = reader.tensor(f"{K}/class_counts", 0)
        assert counts.dtype == np.int64 and counts.tolist() == np.bincount(data.labels.numpy()).tolist()
        means = reader.tensor(f"{K}/class_means", 0)
        assert means.dtype == np.float32 and means.shape == (4, 32, 32)
        np.testing.assert_array_equal(means, np.stack([result.class_means[k] for k in range(4)]))


def test_examples_are_the_first_items_of_each_class_and_their_maps_read_back(explained, tmp_path):
    result, data = explained
    run = result.record(tmp_path / "run", data=(data.images, data.labels), examples=2)
    labels = data.labels.numpy()
    first = np.concatenate([np.flatnonzero(labels == k)[:2] for k in range(4)])
    with RunReader(run) as reader:
        positions = reader.tensor(f"{K}/examples/positions", 0)
        assert positions.dtype == np.int64 and positions.tolist() == first.tolist()
        assert reader.tensor(f"{K}/examples/targets", 0).tolist() == labels[first].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        inputs = reader.tensor(f"{K}/examples/inputs", 0)
        assert inputs.dtype == np.float32 and np.array_equal(inputs, data.images[first].numpy())
        maps = reader.tensor(f"{K}/examples/maps", 0)
        assert maps.dtype == np.float32 and maps.shape == (8, 32, 32)
        np.testing.assert_allclose(maps, scaled(result.maps(first)), atol=1e-6)
        assert reader.meta()[K]["class_names"] is None


def test_every_item_as_an_example_averages_to_the_class_means(explained, tmp_path):
    result, data = explained
    run = result.record(tmp_path / "run", data=data.images, examples=100, name="all")
    with RunReader(run) as reader:
        maps = reader.tensor("explain_dataset/all/examples/maps", 0)
        targets = reader.tensor("explain_dataset/all/examples/targets", 0)
        assert len(maps) == 70
        for k in range(4):
            np.testing.assert_allclose(maps[targets == k].mean(0), result.class_means[k], atol=1e-5)


def test_per_channel_maps_are_summed_over_channels_before_scaling(tmp_path):
    data = shapes(12, 16, seed=2)
    result = explain_dataset(
        random_cnn(data.images), data.images, "integrated_gradients", out=tmp_path / "maps", n_steps=4, shard_size=5
    )
    assert result.map_shape == (3, 16, 16)
    run = result.record(tmp_path / "run", data=data.images, examples=1)
    with RunReader(run) as reader:
        positions = reader.tensor(f"{K}/examples/positions", 0)
        np.testing.assert_allclose(
            reader.tensor(f"{K}/examples/maps", 0), scaled(result.maps(positions).sum(1)), atol=1e-6
        )
        assert reader.tensor(f"{K}/class_means", 0).shape == (len(result.class_means), 16, 16)


def test_vector_inputs_get_no_examples(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(20, 10), torch.arange(20) % 3
    result = explain_dataset(nn.Linear(10, 3), (x, y), "saliency", out=tmp_path / "maps", target="label")
    run = result.record(tmp_path / "run", data=(x, y), examples=3)
    with RunReader(run) as reader:
        assert sorted(reader.tensor_tags()) == [f"{K}/class_counts", f"{K}/class_means", f"{K}/classes"]
        assert reader.tensor(f"{K}/class_means", 0).shape == (3, 10)
    assert "Dataset explanations" in build_report(run).read_text(encoding="utf-8")


def test_a_second_record_of_a_name_needs_overwrite_and_then_replaces_it(explained, tmp_path):
    result, data = explained
    run = result.record(tmp_path / "run", data=data.images, examples=1)
    with pytest.raises(FileExistsError, match=r"already holds the dataset explanation 'explanations'.*overwrite=True"):
        result.record(run, data=data.images)
    result.record(run, name="other")  # another name sits beside it, in the same run
    result.record(run, class_names=NAMES, overwrite=True)  # this time without examples
    with RunReader(run) as reader:
        meta = reader.meta()
        assert reader.info.name == "run"  # the run keeps its name
        assert meta[K]["class_names"] == NAMES and meta["explain_dataset/other"]["class_names"] is None
        assert reader.tensor(f"{K}/examples/inputs", 0).shape == (0, 3, 32, 32)  # the old examples are gone
        assert reader.tensor(f"{K}/examples/positions", 0).shape == (0,)


def test_bad_record_settings_are_explained(explained, tmp_path):
    result, data = explained
    with pytest.raises(ValueError, match="without '/'"):
        result.record(tmp_path / "a", name="a/b")
    with pytest.raises(ValueError, match="3 class_names, but the maps explain class 3"):
        result.record(tmp_path / "b", class_names=NAMES[:3])
    with pytest.raises(ValueError, match="data holds 69 items, but the explanation is of 70"):
        result.record(tmp_path / "c", data=data.images[:69])
    with pytest.raises(ValueError, match="examples must be >= 0"):
        result.record(tmp_path / "d", examples=-1)
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing was created


def test_the_report_section_shows_the_records_with_names_and_errors_escaped(explained, tmp_path):
    result, data = explained
    failure = ShardFailure(shard=1, start=30, stop=60, error="RuntimeError: <script>boom</script>", attempts=2)
    partial = dataclasses.replace(result, coverage=Coverage(70, "ray", 3, (failure,)))
    run = result.record(tmp_path / "run", data=data.images, class_names=NAMES, examples=2)
    partial.record(run, name="on ray")
    page = build_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Dataset explanations (run)" in page
    assert "&lt;b&gt;x&lt;/b&gt; · " in page and "<b>x</b>" not in page
    assert "&lt;script&gt;boom&lt;/script&gt;" in page and "<script>boom" not in page
    assert "<td>70 / 70</td>" in page and "<td>40 / 70</td>" in page
    assert "<td>shard 1: items 30–59</td>" in page and "<td>none</td>" in page
    assert "shard 1 (items 30–59) failed after 2 attempt(s): RuntimeError" in page
    figures = sorted(p.name for p in (tmp_path / "figures").glob("explain_dataset_*"))
    assert figures == [
        "explain_dataset_run_explanations_examples.png", "explain_dataset_run_explanations_means.png",
        "explain_dataset_run_on_ray_means.png",
    ]  # fmt: skip


def test_the_quick_demo_records_its_explanations(tmp_path):
    started = time.perf_counter()
    result = run_demo("scale", tmp_path, quick=True)
    assert time.perf_counter() - started < 20
    run = tmp_path / "scale" / "explanations"
    assert result.runs == (run,)
    assert sorted(p.name for p in (tmp_path / "scale" / "maps" / "gradcam").iterdir()) == [
        "explanations.json",
        *(f"shard-{i:05d}.npz" for i in range(4)),
        "summary.npz",
    ]
    with RunReader(run) as reader:
        info = reader.meta()["explain_dataset/gradcam"]
        assert (info["items"], info["covered"], info["shards"], info["failed"]) == (128, 128, 4, [])
        assert info["class_names"] == ["circle", "square", "triangle", "cross"]
        assert reader.tensor("explain_dataset/gradcam/examples/inputs", 0).shape == (8, 3, 64, 64)
    assert "Dataset explanations" in result.report.read_text(encoding="utf-8")
