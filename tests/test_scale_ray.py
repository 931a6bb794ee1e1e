"""Scale-out on a local Ray instance (2 CPUs, loopback only): the same results as local, failures reported."""

import sys

import numpy as np
import pytest
import ray
import ray.cloudpickle
import torch
from torch.utils.data import Dataset

import deepscope as ds
from deepscope.datasets import shapes
from deepscope.demos.shapes_cnn import ShapesCNN
from deepscope.scale import Ray, explain_dataset
from deepscope.scale._ray import connect

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
ON_RAY = Ray(workers=2)


@pytest.fixture(scope="module")
def cluster():
    """The private Ray instance deepscope starts on this machine, 2 CPUs (or the one already open in this process)."""
    started = not ray.is_initialized()
    connect(Ray(local_cpus=2))
    yield
    if started:
        ray.shutdown()


def test_the_private_instance_listens_on_loopback_only(cluster):
    """Every node address is 127.0.0.1: no process looked for this machine's address through a public DNS server."""
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    assert ray.cluster_resources()["CPU"] == 2


@pytest.fixture(scope="module")
def problem(cluster):
    """2,000 built-in shapes images and a shapes CNN trained on them for a few steps (its answers vary)."""
    data = shapes(2000, 32, seed=5)
    torch.manual_seed(0)
    model = ShapesCNN().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(40):
        batch = slice(50 * (step % 40), 50 * (step % 40) + 50)
        loss = torch.nn.functional.cross_entropy(model(data.images[batch]), data.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), data


class BrokenItems(Dataset):
    """(image, label) items; reading an item in ``broken`` raises, always or only the first time in a process."""

    def __init__(self, images, labels, broken, once=False):
        self.images, self.labels, self.broken, self.once = images, labels, set(broken), once
        self.raised = set()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i in self.broken and not (self.once and i in self.raised):
            self.raised.add(i)
            raise OSError(f"cannot read item {i}")
        return self.images[i], self.labels[i]


def test_evaluate_on_ray_equals_local(problem):
    model, data = problem
    pair = (data.images, data.labels)
    local = ds.evaluate(model, pair, data.class_names, resamples=100, batch_size=100)
    remote = ds.evaluate(
        model, pair, data.class_names, resamples=100, batch_size=100, backend=ON_RAY, model_factory=ShapesCNN
    )
    assert remote.coverage.backend == "ray" and remote.coverage.shards == 8 and remote.coverage.complete
    assert local.summary() == pytest.approx(remote.summary(), abs=1e-12)
    assert np.array_equal(local.metrics.confusion, remote.metrics.confusion)
    assert (local.metrics.confusion.sum(0) > 0).sum() > 2  # the model does not answer one class for all
    assert np.array_equal(local.gallery.indices, remote.gallery.indices)
    assert np.array_equal(local.cells.indices, remote.cells.indices)
    np.testing.assert_allclose(local.embedding.points, remote.embedding.points, rtol=1e-4, atol=1e-5)
    assert local.calibration.ece == pytest.approx(remote.calibration.ece, abs=1e-9)


def test_activation_statistics_on_ray_equal_local(problem):
    model, data = problem
    layers = ["features.relu1", "features.relu3", "pool"]
    local = ds.activations(model, data.images, layers, batch_size=100, example=1234)
    remote = ds.activations(
        model, data.images, layers, batch_size=100, example=1234, backend=ON_RAY, model_factory=ShapesCNN
    )
    assert remote.images == 2000 and remote.coverage.shards == 8
    for name in layers:
        a, b = local.layers[name], remote.layers[name]
        for key in ("min", "max", "zero_fraction", "histogram", "edges", "example"):
            assert torch.equal(getattr(a, key), getattr(b, key)), (name, key)
        assert (a.count, a.sampled, a.below, a.above) == (b.count, b.sampled, b.below, b.above)
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a.std, b.std, rtol=1e-6, atol=1e-9)


def test_top_activations_on_ray_equal_local(problem):
    model, data = problem
    local = ds.top_activations(model, data.images, "features.relu2", k=6, batch_size=100)
    remote = ds.top_activations(
        model, data.images, "features.relu2", k=6, batch_size=100, backend=ON_RAY, model_factory=ShapesCNN
    )
    for key in ("indices", "scores", "positions", "boxes", "patches", "projections"):
        assert torch.equal(getattr(local, key), getattr(remote, key)), key


@pytest.mark.parametrize(("method", "params"), [("gradcam", {}), ("rise", {"n_masks": 48})])
def test_explain_dataset_on_ray_equals_local_and_reruns_identically(problem, tmp_path, method, params):
    model, data = problem
    run = dict(shard_size=250, batch_size=50, seed=3, **params)
    local = explain_dataset(model, data.images, method, out=tmp_path / "local", **run)
    remote = explain_dataset(
        model, data.images, method, out=tmp_path / "ray", backend=ON_RAY, model_factory=ShapesCNN, **run
    )
    assert remote.coverage.backend == "ray" and remote.coverage.complete and len(remote.shards) == 8
    everything = range(2000)
    np.testing.assert_allclose(local.maps(everything), remote.maps(everything), rtol=1e-5, atol=1e-6)
    assert np.array_equal(local.column("targets"), remote.column("targets"))
    if method == "rise":  # stochastic: each shard draws from its own seed, wherever it runs
        again = explain_dataset(
            model, data.images, method, out=tmp_path / "again", backend=ON_RAY, model_factory=ShapesCNN, **run
        )
        assert np.array_equal(remote.maps(everything), again.maps(everything))


def test_a_shard_that_keeps_failing_is_retried_once_then_reported_with_its_items(problem, tmp_path):
    model, data = problem
    items = BrokenItems(data.images[:600], data.labels[:600], broken={430})
    result = explain_dataset(
        model, items, "gradcam", out=tmp_path / "maps", shard_size=100, target="label", backend=ON_RAY,
        model_factory=ShapesCNN,
    )  # fmt: skip
    (failure,) = result.coverage.failed
    assert (failure.shard, failure.start, failure.stop, failure.attempts) == (4, 400, 500, 2)
    assert "OSError: cannot read item 430" in failure.error
    assert result.coverage.missing().tolist() == list(range(400, 500))
    assert "items 400–499" in result.coverage.summary()
    assert [s.index for s in result.shards] == [0, 1, 2, 3, 5]
    pair = (data.images[:600], data.labels[:600])
    local = explain_dataset(model, pair, "gradcam", out=tmp_path / "l", target="label")
    covered = np.r_[0:400, 500:600]
    np.testing.assert_allclose(result.maps(covered), local.maps(covered), rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match=r"no map for item\(s\) \[450\]"):
        result.maps([450])
    with pytest.raises(RuntimeError, match=r"items 256–511\) after 2 attempts: OSError: cannot read item 430"):
        # an evaluation of part of the data is not reported (its shards are whole batches: 256 items here)
        ds.evaluate(model, items, data.class_names, resamples=20, backend=ON_RAY, model_factory=ShapesCNN)


def test_a_shard_that_fails_once_is_retried_and_covered(problem, tmp_path):
    model, data = problem
    items = BrokenItems(data.images[:400], data.labels[:400], broken={120}, once=True)
    result = ds.activations(
        model, items, "pool", batch_size=50, backend=Ray(workers=2, shards_per_worker=2), model_factory=ShapesCNN
    )
    assert result.coverage.complete and result.images == 400 and result.coverage.retried == (1,)
    local = ds.activations(model, (data.images[:400], data.labels[:400]), "pool", batch_size=50)
    torch.testing.assert_close(result.layers["pool"].mean, local.layers["pool"].mean, rtol=1e-6, atol=1e-9)


def test_a_worker_whose_model_cannot_be_built_says_so(problem, tmp_path):
    model, data = problem
    with pytest.raises(ds.errors.ShardsFailedError, match=r"the Ray workers could not run: .*size mismatch"):
        ds.activations(model, data.images[:200], "pool", backend=ON_RAY, model_factory=lambda: ShapesCNN(3))
