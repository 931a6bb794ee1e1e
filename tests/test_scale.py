"""Scale-out without Ray: shards, exact merges of partial statistics, explain_dataset's files, errors."""

import io
import itertools
import json
import pickle
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepscope as ds
from deepscope._evaluation_cells import CellSelector
from deepscope._evaluation_stream import feature_layer, merge_streams, stream_work
from deepscope.datasets import shapes
from deepscope.demos.shapes_cnn import ShapesCNN
from deepscope.layer_stats import _activation_work, _ActivationSettings, _first_edges, _top_work
from deepscope.scale import Coverage, Ray, ShardFailure, explain_dataset, open_explanations
from deepscope.scale._shards import Shard, plan, shard_seed, view
from deepscope.scale.backends import resolve
from deepscope.scale.explain import _explain_work, _Settings


@pytest.fixture(scope="module")
def shapes_model():
    """A shapes CNN with random weights whose batch norms saw the data (so its predictions vary), and 300 images."""
    data = shapes(300, 32, seed=3)
    torch.manual_seed(0)
    model = ShapesCNN()
    with torch.no_grad():
        model.train()(data.images)
    return model.eval(), data


def uneven(size):
    """Three shards of unequal sizes, none a multiple of the batch size."""
    cuts = [0, size // 5, size // 2 + 3, size]
    return [Shard(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(cuts))]


def test_a_plan_covers_every_item_once_in_order():
    shards = plan(1001, 250)
    assert [(s.start, s.stop) for s in shards] == [(0, 250), (250, 500), (500, 750), (750, 1000), (1000, 1001)]
    assert [s.index for s in shards] == [0, 1, 2, 3, 4] and sum(map(len, shards)) == 1001
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        plan(10, 0)
    with pytest.raises(ValueError, match="no item"):
        plan(0, 10)


def test_shard_seeds_are_fixed_distinct_and_fit_a_torch_generator():
    seeds = [shard_seed(7, i) for i in range(100)]
    assert seeds == [shard_seed(7, i) for i in range(100)] and len(set(seeds)) == 100
    assert shard_seed(8, 0) != shard_seed(7, 0) and all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(max(seeds))


def test_a_view_holds_the_shards_items_in_every_form_of_data():
    x, y = torch.arange(20.0).view(10, 2), torch.arange(10)
    shard = Shard(1, 3, 7)
    assert torch.equal(view(x, shard), x[3:7])
    pair = view((x, y), shard)
    assert torch.equal(pair[0], x[3:7]) and torch.equal(pair[1], y[3:7])
    subset = view(TensorDataset(x, y), shard)
    assert len(subset) == 4 and torch.equal(subset[0][0], x[3])
    loader = view(DataLoader(TensorDataset(x, y), batch_size=3), shard)
    assert isinstance(loader, DataLoader) and loader.batch_size == 3
    assert torch.equal(torch.cat([b[0] for b in loader]), x[3:7])


def test_coverage_lists_the_missing_items_of_failed_shards():
    failed = (ShardFailure(3, 30, 40, "ValueError: bad item", 2), ShardFailure(1, 10, 20, "OSError: gone", 2))
    coverage = Coverage(50, "ray", 5, failed)
    assert not coverage.complete
    assert coverage.missing().tolist() == list(range(10, 20)) + list(range(30, 40))
    assert coverage.covered().sum() == 30 and not coverage.covered()[15] and coverage.covered()[25]
    text = coverage.summary()
    assert "20 items not covered" in text and "items 30–39" in text and "ValueError: bad item" in text
    assert Coverage(50).summary() == "50 items in 1 shard on local: all covered"
    assert list(failed[0].ids) == list(range(30, 40))


def test_backends_resolve_and_bad_settings_say_what_is_valid():
    assert resolve("local") is None and resolve("ray") == Ray() and resolve(Ray(workers=3)).workers == 3
    with pytest.raises(ValueError, match="valid: 'local', 'ray'"):
        resolve("dask")
    for bad in ({"workers": 0}, {"cpus_per_worker": 0}, {"shards_per_worker": 0}, {"retries": -1}):
        with pytest.raises(ValueError):
            Ray(**bad)


def test_ray_without_a_model_factory_fails_before_starting_anything(shapes_model):
    model, data = shapes_model
    with pytest.raises(ValueError, match="pass model_factory="):
        ds.activations(model, data.images, "features.relu1", backend="ray")
    with pytest.raises(ValueError, match="pass model_factory="):
        ds.evaluate(model, (data.images, data.labels), backend="ray")
    with pytest.raises(TypeError, match="model_factory must be a function"):
        ds.top_activations(model, data.images, "features.relu2", backend="ray", model_factory=ShapesCNN())


def test_activation_statistics_merged_from_uneven_shards_equal_one_stream(shapes_model):
    model, data = shapes_model
    layers = ["features.relu1", "features.relu3", "pool"]
    watched = {name: dict(model.named_modules())[name] for name in layers}
    edges = _first_edges(model, watched, data.images, 64, 30)
    settings = _ActivationSettings(tuple(layers), dict.fromkeys(layers), 30, 64, 137, edges)
    whole, count = _activation_work(model, data.images, Shard(0, 0, 300), settings=settings)
    parts = [_activation_work(model, view(data.images, s), s, settings=settings) for s in uneven(300)]
    merged = parts[0][0]
    for more, _ in parts[1:]:
        for name in layers:
            merged[name].merge(more[name])
    assert count == sum(n for _, n in parts) == 300
    for name in layers:
        a, b = whole[name].result(name), merged[name].result(name)
        assert a.count == b.count and a.sampled == b.sampled and (a.below, a.above) == (b.below, b.above)
        for key in ("min", "max", "zero_fraction", "histogram", "example"):
            assert torch.equal(getattr(a, key), getattr(b, key)), (name, key)
        # per-batch sums are float32 (merged in float64): other batches round differently, at float32's precision
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a.std, b.std, rtol=1e-6, atol=1e-9)
    # against the textbook definition, in float64
    with torch.no_grad():
        out = model.features[:3](data.images).double()  # features.relu1
    torch.testing.assert_close(merged["features.relu1"].result("x").mean, out.mean((0, 2, 3)), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        merged["features.relu1"].result("x").std, out.transpose(0, 1).flatten(1).std(1), rtol=1e-6, atol=1e-9
    )


def test_the_histogram_samples_the_same_inputs_whatever_the_batches(shapes_model):
    """The sampled inputs are fixed by dataset position, so a different batch size counts the same values."""
    model, data = shapes_model
    layers = ["features.relu1"]
    edges = _first_edges(model, {"features.relu1": model.features[2]}, data.images, 64, 20)
    results = []
    for batch_size in (64, 50, 7):
        settings = _ActivationSettings(tuple(layers), {"features.relu1": None}, 20, batch_size, 0, edges)
        moments, _ = _activation_work(model, data.images, Shard(0, 0, 300), settings=settings)
        results.append(moments["features.relu1"].result("features.relu1"))
    assert edges["features.relu1"][1] > 1  # the layer is big enough to be sampled
    assert all(torch.equal(r.histogram, results[0].histogram) and r.sampled == results[0].sampled for r in results)


def test_top_k_merged_from_shards_equals_one_stream_ties_included(shapes_model):
    model, data = shapes_model
    images = torch.cat([data.images[:100], data.images[:100], data.images[100:150]])  # every score appears twice
    work = partial(_top_work, name="features.relu2", channels=None, k=7, batch_size=32)
    whole, _ = work(model, images, Shard(0, 0, 250))
    parts = [work(model, view(images, s), s)[0] for s in uneven(250)]
    merged = parts[0]
    for more in parts[1:]:
        merged.merge(more)
    assert torch.equal(whole.indices, merged.indices) and torch.equal(whole.scores, merged.scores)
    assert torch.equal(whole.positions, merged.positions)
    duplicated = (whole.indices < 100) & torch.isin(whole.indices + 100, whole.indices)
    assert duplicated.any()  # ties happened, and the earlier image came first
    first = whole.indices.tolist()
    assert all(row.index(i) < row.index(i + 100) for row in first for i in row if i < 100 and i + 100 in row)


def test_cell_selector_merged_equals_one_pass():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    losses = rng.choice([0.5, 1.0, 2.0], 500)  # many ties, broken by position
    one = CellSelector(5)
    one.update(0, labels, preds, losses, 4)
    parts = []
    for start, stop in ((0, 123), (123, 124), (124, 500)):
        part = CellSelector(5)
        part.update(start, labels[start:stop], preds[start:stop], losses[start:stop], 4)
        parts.append(part)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert all(np.array_equal(a, b) for a, b in zip(one.ranked(), parts[0].ranked(), strict=True))


def test_evaluation_streams_merged_from_shards_equal_one_stream(shapes_model):
    model, data = shapes_model
    pair = (data.images, data.labels)
    keep = np.arange(0, 300, 7)
    work = partial(stream_work, batch_size=64, feature=feature_layer(model, None), keep=keep, per_cell=3)
    whole = work(model, pair, Shard(0, 0, 300))
    merged = merge_streams([work(model, view(pair, s), s) for s in uneven(300)])
    for key in ("probabilities", "labels", "losses", "features", "feature_index"):
        np.testing.assert_allclose(getattr(whole, key), getattr(merged, key), rtol=1e-6, atol=1e-7, err_msg=key)
    assert np.array_equal(whole.feature_index, keep)
    assert all(np.array_equal(a, b) for a, b in zip(whole.cells.ranked(), merged.cells.ranked(), strict=True))


def test_local_results_say_they_cover_every_item(shapes_model):
    model, data = shapes_model
    assert ds.activations(model, data.images, "pool").coverage == Coverage(300)
    assert ds.top_activations(model, data.images, "features.relu2", k=3, project=False).coverage == Coverage(300)
    result = ds.evaluate(model, (data.images, data.labels), data.class_names, resamples=20)
    assert result.coverage == Coverage(300)


def test_explain_dataset_writes_compressed_shards_that_hold_explains_maps(shapes_model, tmp_path):
    model, data = shapes_model
    result = explain_dataset(model, data.images[:130], "gradcam", out=tmp_path / "maps", shard_size=50, batch_size=16)
    files = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert files == ["explanations.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz", "summary.npz"]
    manifest = json.loads((tmp_path / "maps" / "explanations.json").read_text())
    assert manifest["items"] == 130 and manifest["map_shape"] == [32, 32] and manifest["target"] == "predicted"
    assert [[s["start"], s["stop"]] for s in manifest["shards"]] == [[0, 50], [50, 100], [100, 130]]
    assert manifest["failed"] == [] and manifest["backend"] == "local" and manifest["versions"]["torch"]
    direct = ds.explain(model, data.images[:130], "gradcam")
    np.testing.assert_allclose(result.maps(range(130)), direct.maps.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.maps([129, 3, 77]), direct.maps.numpy()[[129, 3, 77]], rtol=1e-5, atol=1e-6)
    assert result.column("targets").tolist() == direct.target and result.column("positions").tolist() == list(
        range(130)
    )
    np.testing.assert_allclose(result.column("scores"), direct.scores.numpy(), rtol=1e-5)
    with np.load(tmp_path / "maps" / "shard-00001.npz") as shard:
        assert shard["positions"].tolist() == list(range(50, 100)) and shard["maps"].dtype == np.float32
    # the summary: per explained class, the mean of each map's |m| min-max scaled to [0, 1]
    maps = direct.spatial().abs().flatten(1)
    spread = (maps.amax(1, keepdim=True) - maps.amin(1, keepdim=True)).clamp_min(1e-30)  # an all-zero map stays 0
    scaled = ((maps - maps.amin(1, keepdim=True)) / spread).view(-1, 32, 32)
    explained = np.asarray(direct.target)
    assert set(result.class_counts) == set(explained.tolist()) and sum(result.class_counts.values()) == 130
    for cls, mean in result.class_means.items():
        np.testing.assert_allclose(mean, scaled[explained == cls].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    reopened = open_explanations(tmp_path / "maps")
    assert reopened.shards == result.shards and reopened.coverage == Coverage(130, "local", 3)
    assert (reopened.method, reopened.layer, reopened.params) == ("gradcam", "features", {"upsample": True})


def test_explain_dataset_targets_labels_one_class_or_one_per_item(shapes_model, tmp_path):
    model, data = shapes_model
    images, labels = data.images[:40], data.labels[:40]
    by_label = explain_dataset(model, (images, labels), "saliency", out=tmp_path / "a", target="label")
    assert by_label.column("targets").tolist() == labels.tolist() and by_label.target == "label"
    np.testing.assert_allclose(
        by_label.maps(range(40)), ds.explain(model, images, "saliency", target=labels.tolist()).maps.numpy(), atol=1e-6
    )
    one = explain_dataset(model, images, "saliency", out=tmp_path / "b", target=2)
    assert set(one.column("targets").tolist()) == {2} and one.target == "2"
    per_item = explain_dataset(model, images, "saliency", out=tmp_path / "c", target=list(range(4)) * 10, shard_size=7)
    assert per_item.column("targets").tolist() == list(range(4)) * 10 and per_item.target == "given"
    with pytest.raises(ValueError, match="39 targets for 40 items"):
        explain_dataset(model, images, "saliency", out=tmp_path / "d", target=[0] * 39)
    with pytest.raises(TypeError, match=r"labels are needed"):
        explain_dataset(model, images, "saliency", out=tmp_path / "e", target="label")


def test_a_stochastic_method_is_reproduced_by_its_seed_and_shards(shapes_model, tmp_path):
    model, data = shapes_model
    run = partial(explain_dataset, model, data.images[:24], "rise", n_masks=32, shard_size=10, batch_size=4)
    first, again, other = run(out=tmp_path / "a"), run(out=tmp_path / "b"), run(out=tmp_path / "c", seed=1)
    assert np.array_equal(first.maps(range(24)), again.maps(range(24)))
    assert not np.array_equal(first.maps(range(24)), other.maps(range(24)))
    # the same shard plan gives the same maps whatever the batch size (RISE draws per explain call: one call per shard)
    whole = run(out=tmp_path / "d", batch_size=10)
    assert whole.maps(range(24)).shape == (24, 32, 32)


class _PicklerOfTorch23(pickle.Pickler):
    """Pickles as torch 2.3 does: a torch.Generator cannot be pickled (newer torch can)."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.Generator):
            raise TypeError("cannot pickle 'torch._C.Generator' object")
        return NotImplemented


def test_a_stochastic_shards_result_pickles_without_its_generator(shapes_model):
    """What a Ray worker sends back holds no generator (explain() keeps it in its provenance)."""
    model, data = shapes_model
    settings = _Settings("rise", {"n_masks": 16}, None, None, batch_size=4, seed=0, dtype="float32")
    result = _explain_work(model, data.images[:6], Shard(0, 0, 6), settings=settings)
    _PicklerOfTorch23(io.BytesIO()).dump(result)
    assert result.params["n_masks"] == 16 and "generator" not in result.params
    json.dumps(result.params)


def test_float16_halves_the_maps_and_an_overflow_raises(shapes_model, tmp_path):
    model, data = shapes_model
    half = explain_dataset(model, data.images[:20], "saliency", out=tmp_path / "h", dtype="float16")
    full = explain_dataset(model, data.images[:20], "saliency", out=tmp_path / "f")
    assert half.maps([0]).dtype == np.float16
    np.testing.assert_allclose(half.maps(range(20)), full.maps(range(20)), rtol=1e-3, atol=1e-6)
    huge = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    with torch.no_grad():
        huge[1].weight.fill_(1e6)  # the saliency map is |weight|: past float16's 65,504
    with pytest.raises(ValueError, match="overflow float16, use float32"):
        explain_dataset(huge, data.images[:4], "saliency", out=tmp_path / "o", dtype="float16")


def test_explain_dataset_protects_folders_and_rejects_bad_settings(shapes_model, tmp_path):
    model, data = shapes_model
    images = data.images[:8]
    explain_dataset(model, images, "saliency", out=tmp_path / "maps")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        explain_dataset(model, images, "saliency", out=tmp_path / "maps")
    assert explain_dataset(model, images, "gradcam", out=tmp_path / "maps", overwrite=True).method == "gradcam"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"did not write \(thesis.tex\)"):
        explain_dataset(model, images, "saliency", out=tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    with pytest.raises(ds.errors.UnknownNameError, match="gradcam"):
        explain_dataset(model, images, "gradcan", out=tmp_path / "x")
    with pytest.raises(ValueError, match="pass seed="):
        explain_dataset(model, images, "rise", out=tmp_path / "x", generator=torch.Generator())
    with pytest.raises(ValueError, match="valid: float32, float16"):
        explain_dataset(model, images, "saliency", out=tmp_path / "x", dtype="int8")
    with pytest.raises(KeyError, match=r"no map for item\(s\) \[8\]"):
        open_explanations(tmp_path / "maps").maps([8])
    with pytest.raises(FileNotFoundError, match="not a folder written by explain_dataset"):
        open_explanations(tmp_path / "mine")


def test_explain_dataset_leaves_the_model_as_it_was(shapes_model, tmp_path):
    model, data = shapes_model
    model.train()
    model.fc.weight.requires_grad_(False)
    try:
        explain_dataset(model, data.images[:8], "integrated_gradients", out=tmp_path / "m", n_steps=4)
        assert model.training and not model.fc.weight.requires_grad
        assert all(p.grad is None for p in model.parameters())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    finally:
        model.eval()
        model.fc.weight.requires_grad_(True)


def test_explain_dataset_writes_each_shard_as_it_is_done(shapes_model, tmp_path):
    """Maps never pile up in memory: when the third shard raises, the first two are already on disk."""
    model, data = shapes_model

    class FailsLate(torch.utils.data.Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, i):
            if i == 25:
                raise OSError("disk gone")
            return data.images[i]

    with pytest.raises(OSError, match="disk gone"):
        explain_dataset(model, FailsLate(), "saliency", out=tmp_path / "maps", shard_size=10)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["shard-00000.npz", "shard-00001.npz"]
    again = explain_dataset(model, data.images[:30], "saliency", out=tmp_path / "maps", shard_size=10, overwrite=True)
    assert [s.file for s in again.shards] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
