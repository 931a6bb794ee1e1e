"""Per-layer health statistics: exact values on a hand-checked step, hooks only while armed, divergence flagged."""

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.errors import LayerNotFoundError
from deepscope.health import STATISTICS, LayerHealth, default_health_layers
from deepscope.hooks import HookSet
from deepscope.recorder import TAGS, Recorder
from deepscope.store import RunReader


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid())


def _train(model, rec, steps, x, y, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.step(loss=loss)


def _health_layers(rec):
    return next(p for p in rec.probes if p.name == "layer_health").layers


def _stat(reader, step, name, layer):
    table = reader.tensor(TAGS.HEALTH, step)
    layers = reader.meta()[TAGS.HEALTH_LAYERS]
    return float(table[STATISTICS.index(name), layers.index(layer)])


def test_statistics_of_the_measured_step_are_exact(tmp_path, generator):
    model = _net()
    x, y = torch.randn(8, 4, generator=generator), torch.rand(8, 3, generator=generator)
    reference = _net()  # same seed: the same weights, trained by hand below
    with Recorder(model, tmp_path, every=2) as rec:
        _train(model, rec, 2, x, y)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    _train_one = lambda: nn.functional.mse_loss(reference(x), y)  # noqa: E731
    loss = _train_one()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()  # step 1 is not measured
    acts = {}
    hooks = [reference[i].register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(i, o.detach())) for i in (1, 3)]
    loss = _train_one()
    for h in hooks:
        h.remove()
    optimizer.zero_grad()
    loss.backward()
    before = [p.detach().clone() for p in reference[2].parameters()]
    optimizer.step()
    with RunReader(tmp_path) as reader:
        assert reader.meta()[TAGS.HEALTH_LAYERS] == ["0", "1", "2", "3"]
        assert [int(s) for s in reader.tensor_steps(TAGS.HEALTH)] == [2]
        relu = acts[1]
        assert _stat(reader, 2, "act_mean", "1") == pytest.approx(float(relu.mean()), rel=1e-5)
        assert _stat(reader, 2, "act_std", "1") == pytest.approx(float(relu.std()), rel=1e-5)
        assert _stat(reader, 2, "act_zero", "1") == pytest.approx(float((relu == 0).float().mean()))
        assert _stat(reader, 2, "dead_channels", "1") == pytest.approx(float((relu == 0).all(0).float().mean()))
        sigmoid = acts[3]
        expected = ((sigmoid <= 0.01) | (sigmoid >= 0.99)).float().mean()
        assert _stat(reader, 2, "saturation", "3") == pytest.approx(float(expected))
        assert torch.isnan(torch.tensor(_stat(reader, 2, "saturation", "1")))  # ReLU is unbounded
        params = list(reference[2].parameters())
        grad = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
        assert _stat(reader, 2, "grad_norm", "2") == pytest.approx(float(grad), rel=1e-5)
        weight = torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in params]))
        assert _stat(reader, 2, "weight_norm", "2") == pytest.approx(float(weight), rel=1e-5)
        old = torch.linalg.vector_norm(torch.cat([b.flatten() for b in before]))
        assert _stat(reader, 2, "update_ratio", "2") == pytest.approx(float(0.1 * grad / old), rel=1e-4)  # plain SGD
        assert torch.isnan(torch.tensor(_stat(reader, 2, "grad_norm", "1")))  # a ReLU owns no parameters
        assert TAGS.HEALTH_NONFINITE not in reader.meta()


def test_hooks_exist_only_while_a_measured_step_runs(tmp_path, generator):
    model = _net()
    x, y = torch.randn(8, 4, generator=generator), torch.rand(8, 3, generator=generator)
    armed = []
    with Recorder(model, tmp_path, every=3) as rec:
        for _ in range(6):
            armed.append(any(len(m._forward_hooks) for m in model.modules()))
            _train(model, rec, 1, x, y)
    assert armed == [False, False, True, False, False, True]  # steps 3 and 6 are measured
    assert not any(len(m._forward_hooks) for m in model.modules())
    with RunReader(tmp_path) as reader:
        assert [int(s) for s in reader.tensor_steps(TAGS.HEALTH)] == [3, 6]


def test_hooks_are_removed_when_training_raises(tmp_path, generator):
    model = _net()
    with pytest.raises(RuntimeError, match="boom"), Recorder(model, tmp_path, every=1):
        raise RuntimeError("boom")
    assert not any(len(m._forward_hooks) for m in model.modules())


def test_divergence_is_recorded_and_flagged(tmp_path, generator):
    model = _net()
    x, y = torch.randn(8, 4, generator=generator), torch.rand(8, 3, generator=generator)
    with Recorder(model, tmp_path, every=1) as rec:
        _train(model, rec, 2, x, y)
        with torch.no_grad():
            model[0].weight[0, 0] = float("inf")
        _train(model, rec, 2, x, y)
    with RunReader(tmp_path) as reader:
        assert reader.meta()[TAGS.HEALTH_NONFINITE] == 3
        assert not torch.isfinite(torch.tensor(_stat(reader, 3, "weight_norm", "0")))


def test_layer_selection(tmp_path):
    model = _net()
    assert default_health_layers(model) == ["0", "1", "2", "3"]
    for spec, expected in [("re:^[02]$", ["0", "2"]), (["2", model[3]], ["2", "3"])]:
        with Recorder(model, tmp_path / str(len(expected)) / spec[0], health=spec) as rec:
            assert _health_layers(rec) == expected
    with Recorder(model, tmp_path / "off", health=False):
        pass
    with RunReader(tmp_path / "off") as reader:
        assert TAGS.HEALTH not in reader.tensor_tags()
    with pytest.raises(LayerNotFoundError, match="Valid names: '0', '1', '2', '3'"):
        Recorder(model, tmp_path / "bad", health=["lin0"])
    with pytest.raises(ValueError, match="no layer name matches"):
        Recorder(model, tmp_path / "bad", health="re:conv")
    assert _health_layers(Recorder(model, tmp_path / "types", health=nn.Linear)) == ["0", "2"]
    assert _health_layers(Recorder(model, tmp_path / "types", health=(nn.ReLU, nn.Sigmoid))) == ["1", "3"]
    with pytest.raises(ValueError, match=r"no module of type .*Conv2d.*types: Linear, ReLU, Sequential, Sigmoid"):
        Recorder(model, tmp_path / "bad", health=nn.Conv2d)


def _measure_one_forward(module, x):
    """The layer-health table of one forward pass of ``nn.Sequential(module)`` on ``x``."""
    model = nn.Sequential(module)
    health = LayerHealth(model, ["0"])
    with HookSet() as hooks:
        health.arm(hooks)
        model(x)
    return health.measure()[TAGS.HEALTH][:, 0]


def test_large_outputs_are_summarised_from_samples_of_the_batch(generator):
    a = torch.relu(torch.randn(64, 8, 32, 32, generator=generator) + torch.linspace(-1, 1, 8)[None, :, None, None])
    a[:, 3] = 0.0  # one dead channel
    mean, std, zero, dead, saturation = _measure_one_forward(nn.ReLU(), a)[:5].tolist()  # ReLU(a) = a
    assert mean == pytest.approx(float(a.mean()), rel=0.02) and std == pytest.approx(float(a.std()), rel=0.02)
    assert zero == pytest.approx(float((a == 0).float().mean()), abs=0.01)
    assert dead == 1 / 8  # measured over the whole batch, exactly
    assert torch.isnan(torch.tensor(saturation))
    assert torch.isnan(_measure_one_forward(nn.Identity(), a)[3])  # dead units: activation modules only
    x = torch.randn(64, 8, 32, 32, generator=generator) * 3
    saturation = float(_measure_one_forward(nn.Tanh(), x)[4])  # within 1 % of the range of ±1
    assert saturation == pytest.approx(float((torch.tanh(x).abs() >= 0.98).float().mean()), abs=0.01)


def test_moments_survive_a_mean_far_larger_than_the_spread(generator):
    x = 1000.0 + 0.01 * torch.randn(4096, generator=generator)  # float32: naive sums of squares lose the spread
    table = _measure_one_forward(nn.Identity(), x[None])
    assert float(table[0]) == pytest.approx(float(x.double().mean()), rel=1e-6)
    assert float(table[1]) == pytest.approx(float(x.double().std()), rel=1e-3)


def test_a_model_without_sub_modules_records_an_empty_table(tmp_path):
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    model = Bare()
    with Recorder(model, tmp_path, every=1) as rec:
        model(torch.ones(2, 3)).sum().backward()
        rec.step(loss=1.0)
    with RunReader(tmp_path) as reader:
        assert reader.tensor(TAGS.HEALTH, 1).shape == (len(STATISTICS), 0)


def test_histograms_and_quantiles_of_outputs_and_weights(tmp_path, generator):
    from deepscope._distribution_summary import QUANTILES, split_summary

    model = _net()
    x, y = torch.randn(64, 4, generator=generator), torch.rand(64, 3, generator=generator)
    outputs = {}
    handle = model[0].register_forward_hook(lambda m, a, o: outputs.setdefault(len(outputs), o.detach().clone()))
    with Recorder(model, tmp_path, every=2, histogram_bins=10) as rec:
        _train(model, rec, 2, x, y)
    handle.remove()
    with RunReader(tmp_path) as reader:
        meta = reader.meta()
        assert meta[TAGS.HISTOGRAM_BINS] == 10 and meta[TAGS.QUANTILE_LEVELS] == list(QUANTILES)
        table = reader.tensor(TAGS.DISTRIBUTIONS, 2)  # (layers, output|weights, summary)
    assert table.shape == (4, 2, 2 + 10 + len(QUANTILES))
    out = outputs[1].numpy().ravel()  # layer "0" during the measured (second) step
    measured = split_summary(table[0, 0])
    counts, edges = np.histogram(out, bins=10, range=(out.min(), out.max()))
    np.testing.assert_allclose(measured.edges, edges, rtol=1e-5)
    np.testing.assert_array_equal(measured.counts, counts)
    np.testing.assert_allclose(list(measured.quantiles.values()), np.quantile(out, QUANTILES), rtol=1e-5)
    weights = np.concatenate([p.detach().numpy().ravel() for p in model[0].parameters()])  # after the step
    assert split_summary(table[0, 1]).total == weights.size
    np.testing.assert_allclose(split_summary(table[0, 1]).edges[[0, -1]], [weights.min(), weights.max()], rtol=1e-6)
    assert split_summary(table[1, 1]) is None  # a ReLU owns no weights


def test_distribution_summaries_leave_non_finite_values_out():
    from deepscope._distribution_summary import split_summary
    from deepscope._distributions import summarise

    values = torch.tensor([0.0, 1.0, 2.0, 3.0, float("nan"), float("inf"), -float("inf")])
    summary = split_summary(summarise(values, 3).numpy())
    assert summary.total == 4
    np.testing.assert_array_equal(summary.counts, [1, 1, 2])
    np.testing.assert_allclose(summary.edges, [0, 1, 2, 3])
    assert summary.quantiles[0.5] == pytest.approx(1.5)
    assert split_summary(summarise(torch.tensor([float("nan")]), 3).numpy()) is None
    assert split_summary(summarise(torch.full((5,), 2.0), 3).numpy()).counts.tolist() == [5, 0, 0]
