import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from deepscope.demos import toy2d
from deepscope.errors import LayerNotFoundError
from deepscope.recorder import TAGS, Recorder
from deepscope.store import RunReader


def _classifier(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))


def _train(model, rec, steps, generator):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(loss=loss, metrics={"lr": 0.1})


def test_records_scalars_snapshots_and_predictions(tmp_path, generator):
    model = _classifier()
    probe_x = torch.randn(50, 4, generator=generator)
    probe_y = torch.randint(0, 3, (50,), generator=generator)
    with Recorder(model, tmp_path / "run", probe=(probe_x, probe_y), layers=["1"], every=4) as rec:
        _train(model, rec, 10, generator)
    with RunReader(tmp_path / "run") as reader:
        loss = reader.scalars(TAGS.LOSS)
        assert loss.steps.tolist() == list(range(1, 11))
        assert reader.scalars("train/lr").values.tolist() == [0.1] * 10
        # step 0 on entry, every 4 steps, and the final step on exit
        assert reader.tensor_steps(TAGS.PROBE_PRED).tolist() == [0, 4, 8, 10]
        assert reader.tensor_steps("repr/1").tolist() == [0, 4, 8, 10]
        assert reader.tensor("repr/1", 10).shape == (50, 32)
        final_pred = reader.tensor(TAGS.PROBE_PRED, 10)
        with torch.no_grad():
            expected = model(probe_x).argmax(1).numpy()
            hidden = torch.relu(model[0](probe_x)).numpy()
        np.testing.assert_array_equal(final_pred, expected)
        np.testing.assert_allclose(reader.tensor("repr/1", 10), hidden, rtol=1e-6)
        acc = reader.scalars(TAGS.ACCURACY)
        bal = reader.scalars(TAGS.BALANCED_ACCURACY)
        assert acc.values[-1] == pytest.approx((expected == probe_y.numpy()).mean())
        assert bal.values[-1] == pytest.approx(balanced_accuracy_score(probe_y.numpy(), expected))
        assert reader.meta()[TAGS.MAJORITY_BASELINE] == pytest.approx(np.bincount(probe_y).max() / 50)
        assert reader.info.status == "finished"


def test_wide_layers_are_projected_and_documented(tmp_path, generator):
    model = _classifier()
    probe = (torch.randn(20, 4, generator=generator), torch.randint(0, 3, (20,), generator=generator))
    with Recorder(model, tmp_path / "r", probe=probe, layers=["0"], max_dims=8) as rec:
        rec.step(loss=1.0)
    with RunReader(tmp_path / "r") as reader:
        assert reader.tensor("repr/0", 0).shape == (20, 8)
        assert reader.meta()["repr/projection/0"] == {"kind": "gaussian_random", "seed": 0, "from": 32, "to": 8}


def test_failure_inside_the_loop_marks_the_run_failed(tmp_path, generator):
    model = _classifier()
    with pytest.raises(RuntimeError, match="boom"), Recorder(model, tmp_path / "r") as rec:
        rec.step(loss=2.0)
        raise RuntimeError("boom")
    with RunReader(tmp_path / "r") as reader:
        assert reader.info.status == "failed"
        assert reader.scalars(TAGS.LOSS).values.tolist() == [2.0]


def test_single_output_needs_an_explicit_rule(tmp_path, generator):
    model = nn.Linear(2, 1)
    probe = (torch.randn(10, 2, generator=generator), torch.randint(0, 2, (10,), generator=generator))
    with pytest.raises(ValueError, match="predict='logit'"), Recorder(model, tmp_path / "r", probe=probe):
        pass


def test_unknown_layer_suggests_the_closest(tmp_path):
    model = toy2d.make_model(0)
    with pytest.raises(LayerNotFoundError, match="'bottleneck'"):
        Recorder(model, tmp_path / "r", layers=["botleneck"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 0}, "every must be a positive integer"),
        ({"predict": "softmax"}, "predict must be"),
        ({"probe": (torch.zeros(3, 2), torch.zeros(4))}, "3 samples but labels have 4"),
        ({"probe": (torch.zeros(2, 2), torch.tensor([0.5, 1.0]))}, "class indices"),
    ],
)
def test_bad_arguments_are_explained(tmp_path, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Recorder(toy2d.make_model(0), tmp_path / "r", **kwargs)


def test_step_outside_the_context_is_an_error(tmp_path):
    rec = Recorder(toy2d.make_model(0), tmp_path / "r")
    with pytest.raises(RuntimeError, match="not open"):
        rec.step(loss=1.0)


def test_decision_grid_for_two_dimensional_probes(tmp_path):
    points, labels = toy2d.make_data(200, seed=1)
    model = toy2d.make_model(0)
    with Recorder(model, tmp_path / "r", probe=(points, labels), predict="probability", decision_grid=16) as rec:
        rec.step(loss=0.5)
    with RunReader(tmp_path / "r") as reader:
        grid = reader.tensor(TAGS.GRID_SCORE, 1)
        xmin, xmax, ymin, ymax = reader.meta()[TAGS.GRID_EXTENT]
        assert grid.shape == (16, 16)
        corner = torch.tensor([[xmax, ymin]])  # last column of the first row
        with torch.no_grad():
            assert grid[0, -1] == pytest.approx(model(corner).item(), rel=1e-5)
        assert xmin < points[:, 0].min().item() and ymax > points[:, 1].max().item()


def test_toy_runs_are_bit_for_bit_reproducible(tmp_path):
    config = toy2d.Toy2DConfig(seeds=(3,), epochs=1, every=25)
    points, labels = toy2d.make_data(config.n_points, config.data_seed)
    runs = [toy2d.train_one(tmp_path / name, 3, config, points, labels) for name in ("a", "b")]
    readers = [RunReader(r) for r in runs]
    try:
        a, b = readers
        assert a.scalars(TAGS.LOSS).values.tobytes() == b.scalars(TAGS.LOSS).values.tobytes()
        steps, reprs = a.tensors("repr/bottleneck")
        _, reprs_b = b.tensors("repr/bottleneck")
        assert len(steps) == 5  # 0, 25, 50, 75, 100
        assert all(x.tobytes() == y.tobytes() for x, y in zip(reprs, reprs_b, strict=False))
    finally:
        for r in readers:
            r.close()


def test_toy_task_matches_the_article():
    points, labels = toy2d.make_data()
    assert points.shape == (1000, 2) and points.min() >= -5 and points.max() <= 5
    assert labels.float().mean().item() == pytest.approx(0.157, abs=0.005)
    model = toy2d.make_model(0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(100, 2), (100,), (2, 100), (2,), (1, 2), (1,)]
    before = torch.get_rng_state()
    toy2d.make_model(1)
    assert torch.equal(before, torch.get_rng_state()), "building the model must not consume the global RNG"


@pytest.mark.cuda
def test_recorder_follows_the_model_device(tmp_path, generator):
    model = _classifier().cuda()
    probe = (torch.randn(20, 4, generator=generator), torch.randint(0, 3, (20,), generator=generator))
    with Recorder(model, tmp_path / "r", probe=probe, layers=["1"]) as rec:
        rec.step(loss=torch.tensor(1.0, device="cuda"))
    with RunReader(tmp_path / "r") as reader:
        assert reader.tensor("repr/1", 1).shape == (20, 32)
    assert next(model.parameters()).is_cuda


def test_step_values_are_batched_to_the_host_and_exact(tmp_path):
    model = _classifier()
    losses = [torch.tensor(0.1 * i, requires_grad=True) * 2 for i in range(1, 8)]
    with Recorder(model, tmp_path / "r", every=3) as rec:
        for i, loss in enumerate(losses):
            rec.step(loss=loss, metrics={"np": np.float32(i), "int": i})
        assert len(rec._pending) == 1  # step 7 waits for the next flush (snapshots at 3 and 6 flushed)
    with RunReader(tmp_path / "r") as reader:
        np.testing.assert_allclose(reader.scalars(TAGS.LOSS).values, [t.item() for t in losses], rtol=1e-6)
        assert reader.scalars("train/np").values.tolist() == list(range(7))
        assert reader.scalars("train/int").steps.tolist() == list(range(1, 8))


def test_non_scalar_step_values_are_rejected(tmp_path):
    with Recorder(_classifier(), tmp_path / "r") as rec:
        with pytest.raises(ValueError, match="expected a scalar"):
            rec.step(loss=torch.zeros(2))
        with pytest.raises(TypeError, match="expected a number"):
            rec.step(metrics={"name": "text"})
        assert rec.global_step == 0  # a rejected step is not counted


def test_an_existing_run_is_not_appended_to_by_accident(tmp_path):
    model = _classifier()
    with Recorder(model, tmp_path / "r") as rec:
        rec.step(loss=1.0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        Recorder(model, tmp_path / "r").open()
    with Recorder(model, tmp_path / "r", overwrite=True) as rec:
        rec.step(loss=5.0)
        rec.step(loss=6.0)
    with RunReader(tmp_path / "r") as reader:
        assert reader.scalars(TAGS.LOSS).values.tolist() == [5.0, 6.0]


def test_learning_rates_throughput_and_validation_share_the_step_axis(tmp_path, generator):
    model = _classifier()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}], lr=0.1
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    with Recorder(model, tmp_path, optimizer=optimizer, health=False) as rec:
        for _ in range(4):
            optimizer.step()  # no gradients: a no-op that keeps the scheduler's call order
            rec.step(loss=1.0, batch_size=32)
            scheduler.step()
            if rec.global_step % 2 == 0:
                rec.eval_step({"loss": torch.tensor(0.5 * rec.global_step), "accuracy": 0.25})
        with pytest.raises(ValueError, match="at least one metric"):
            rec.eval_step({})
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            rec.step(batch_size=0)
    with RunReader(tmp_path) as reader:
        lr0, lr1 = reader.scalars("train/lr/0"), reader.scalars("train/lr/1")
        assert lr0.steps.tolist() == [1, 2, 3, 4]
        np.testing.assert_allclose(lr0.values, [0.1, 0.1, 0.01, 0.01], rtol=1e-6)  # the scheduler's decay
        np.testing.assert_allclose(lr1.values, [0.5, 0.5, 0.05, 0.05], rtol=1e-6)
        assert (reader.scalars(TAGS.SAMPLES_PER_S).values > 0).all()
        loss = reader.scalars("eval/loss")
        assert loss.steps.tolist() == [2, 4] and loss.values.tolist() == [1.0, 2.0]
        assert reader.scalars("eval/accuracy").values.tolist() == [0.25, 0.25]


def test_wide_feature_maps_are_pooled_before_any_random_projection(tmp_path, generator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    model.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)))
    x, y = torch.randn(12, 1, 6, 6, generator=generator), torch.randint(0, 2, (12,), generator=generator)
    with Recorder(model, tmp_path, probe=(x, y), layers=["1", "2"], every=5, max_dims=100, health=False):
        pass
    with torch.no_grad():
        relu = model[1](model[0](x))
        pooled = nn.functional.adaptive_avg_pool2d(relu, 3).flatten(1)  # 8 channels · 3 · 3 = 72 <= 100
    with RunReader(tmp_path) as reader:
        meta = reader.meta()
        assert meta["repr/pooling/1"] == {"kind": "adaptive_avg_pool", "grid": [3, 3], "from": [8, 6, 6], "to": 72}
        np.testing.assert_allclose(reader.tensor("repr/1", 0), pooled.numpy(), rtol=1e-6)
        assert reader.tensor("repr/2", 0).shape == (12, 16 * 2 * 2)  # 16 channels: a 2 × 2 grid fits in 100
        assert "repr/projection/1" not in meta
    with Recorder(model, tmp_path / "narrow", probe=(x, y), layers=["2"], every=5, max_dims=8, health=False):
        pass
    with RunReader(tmp_path / "narrow") as reader:  # 16 channels > 8: pooled to 1 × 1, then projected
        assert reader.meta()["repr/pooling/2"]["to"] == 16
        assert reader.meta()["repr/projection/2"] == {"kind": "gaussian_random", "seed": 0, "from": 16, "to": 8}
        assert reader.tensor("repr/2", 0).shape == (12, 8)


def test_health_and_snapshots_can_have_their_own_periods(tmp_path, generator):
    model = _classifier()
    probe = (torch.randn(20, 4, generator=generator), torch.randint(0, 3, (20,), generator=generator))
    with Recorder(model, tmp_path, probe=probe, every=1, snapshot_every=4) as rec:
        _train(model, rec, 9, generator)
    with RunReader(tmp_path) as reader:
        assert reader.tensor_steps(TAGS.HEALTH).tolist() == list(range(1, 10))
        assert reader.tensor_steps(TAGS.PROBE_PRED).tolist() == [0, 4, 8, 9]
        assert reader.meta()["recorder/snapshot_every"] == 4
    with pytest.raises(ValueError, match="snapshot_every must be a positive integer"):
        Recorder(model, tmp_path / "x", snapshot_every=0)
