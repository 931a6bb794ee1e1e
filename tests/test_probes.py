"""The probe registry: every built-in probe round-trips through a run store; user probes plug in."""

import fnmatch
import re

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.probes import PROBES, FeatureEvolution, Probe
from deepscope.recorder import TAGS, Recorder
from deepscope.store import RunReader


class AddBlock(nn.Module):
    """x + F(x): a declared residual block."""

    def __init__(self, width):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def forward(self, x):
        return x + self.branch(x)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), AddBlock(16), nn.Linear(16, 2))


def _record_with_everything(run_dir, extra_probes=lambda model: ()):
    """A short run with every built-in probe switched on (2-D binary task: the decision map too)."""
    model = _model()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=generator)
    y = (x.norm(dim=1) < 1).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder(
        model,
        run_dir,
        probe=(x, y),
        layers=["1"],
        every=2,
        optimizer=optimizer,
        residual=["2"],
        histogram_bins=8,
        decision_grid=8,
        probes=extra_probes(model),
    )
    with recorder as rec:
        for _ in range(4):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss=loss, metrics={"accuracy": 0.5}, batch_size=len(x))
    return recorder, model


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probes") / "run"
    recorder, _ = _record_with_everything(run_dir)
    with RunReader(run_dir) as reader:
        written = set(reader.scalar_tags()) | set(reader.tensor_tags()) | set(reader.meta())
    return recorder, written


@pytest.fixture(scope="module")
def recorded_cnn(tmp_path_factory):
    """A small CNN run for the probes that need spatial layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 2))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 8, 8, generator=generator), torch.randint(0, 2, (12,), generator=generator)
    run_dir = tmp_path_factory.mktemp("cnn") / "run"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probes = [FeatureEvolution(model, "1", channels=[0, 3])]
    with Recorder(model, run_dir, probe=(x, y), every=2, probes=probes) as rec:
        for _ in range(4):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss=loss)
    with RunReader(run_dir) as reader:
        written = set(reader.scalar_tags()) | set(reader.tensor_tags()) | set(reader.meta())
    return rec, written, (model, x)


SPATIAL = {"feature_evolution"}  # probes recorded on the CNN run


@pytest.mark.parametrize("name", PROBES.names())
def test_every_probe_round_trips_through_a_run_store(recorded, recorded_cnn, name):
    recorder, written = (recorded_cnn[0], recorded_cnn[1]) if name in SPATIAL else recorded
    assert name in [p.name for p in recorder.probes], f"the test run does not switch {name!r} on"
    probe_class = PROBES.get(name)
    assert probe_class.name == name and probe_class.schedule in ("step", "measured", "snapshot")
    assert probe_class.__doc__ and probe_class.tags, f"{name} must document itself and list its tags"
    for tag in probe_class.tags:
        pattern = re.sub(r"\{\w+\}", "*", tag)
        assert fnmatch.filter(written, pattern), f"{name} declares {tag!r} but the run holds no such tag"


def test_the_run_lists_its_probes(tmp_path, recorded):
    assert TAGS.PROBES in recorded[1]
    with Recorder(_model(), tmp_path / "plain") as rec:
        names = [p.name for p in rec.probes]
    with RunReader(tmp_path / "plain") as reader:
        assert reader.meta()[TAGS.PROBES] == names == ["scalars", "throughput", "layer_health"]


class MaxWeight(Probe):
    """A user probe on the measured steps: the largest weight of the first layer."""

    schedule = "measured"
    tags = ("user/max_weight",)

    def __init__(self, layer):
        self.layer, self.armed_with = layer, None

    def arm(self, hooks):
        self.armed_with = hooks

    def measure(self):
        return {"user/max_weight": self.layer.weight.detach().max().reshape(1)}


class MeanOutput(Probe):
    """A user snapshot probe: the mean probe-set output and the mean of a layer."""

    schedule = "snapshot"
    tags = ("user/mean_output", "user/mean_hidden")

    def __init__(self, layer):
        self.layer = layer

    def snapshot_layers(self):
        return {"hidden": self.layer}

    def snapshot(self, run, view):
        run.add_scalar("user/mean_output", view.step, float(view.outputs.mean()))
        run.add_scalar("user/mean_hidden", view.step, float(view.layer_outputs["hidden"].mean()))


class Squares(Probe):
    """A user step probe: the square of the step number, as a tensor kept on its device."""

    schedule = "step"
    tags = ("user/square",)

    def step_values(self, info):
        return {"user/square": torch.tensor(float(info.step) ** 2)}


def test_user_probes_of_every_schedule_are_recorded(tmp_path):
    probes = []
    _, trained = _record_with_everything(
        tmp_path / "r", lambda model: probes.extend([MaxWeight(model[0]), MeanOutput(model[1]), Squares()]) or probes
    )
    assert probes[0].armed_with is not None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in trained.modules())
    with RunReader(tmp_path / "r") as reader:
        assert reader.scalars("user/square").values.tolist() == [1.0, 4.0, 9.0, 16.0]
        assert reader.tensor_steps("user/max_weight").tolist() == [2, 4]
        assert reader.scalars("user/mean_output").steps.tolist() == [0, 2, 4]
        assert np.isfinite(reader.scalars("user/mean_hidden").values).all()
        assert reader.meta()[TAGS.PROBES][-3:] == ["MaxWeight", "MeanOutput", "Squares"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"probes": [object()]}, TypeError, "must be deepscope.probes.Probe instances"),
        ({"probes": [MeanOutput(nn.ReLU())]}, ValueError, "snapshot probe: pass probe="),
        ({"layers": ["1"]}, ValueError, "recorded on the probe set"),
        ({"health": False, "histogram_bins": 8}, ValueError, "measured with the layer health"),
        ({"health": False, "residual": ["2"]}, ValueError, "measured with the layer health"),
    ],
)
def test_probe_arguments_that_cannot_work_are_refused(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        Recorder(_model(), tmp_path / "r", **kwargs)


def test_feature_evolution_keeps_each_channels_strongest_unit(recorded_cnn, tmp_path):
    recorder, _, (model, x) = recorded_cnn
    with RunReader(recorder.run_dir) as reader:
        steps = reader.tensor_steps("evolution/1/patches").tolist()
        assert steps == [0, 2, 4]
        assert reader.meta()["evolution/1"]["field"] == {"size": [3, 3], "jump": [1, 1], "start": [-1, -1]}
        patches, best = reader.tensor("evolution/1/patches", 4), reader.tensor("evolution/1/images", 4)
        scores = reader.tensor("evolution/1/scores", 4)
        projections = reader.tensor("evolution/1/projections", 4)
    model.eval()
    with torch.no_grad():
        maps = model[:2](x)[:, [0, 3]]  # (12, 2, 8, 8) after the final snapshot's weights
    strongest = maps.flatten(2).max(2).values  # (12, 2)
    assert best.tolist() == strongest.argmax(0).tolist()
    np.testing.assert_allclose(scores, strongest.max(0).values.numpy(), rtol=1e-5)
    assert patches.shape == projections.shape == (2, 1, 3, 3) and np.abs(projections).sum() > 0
    from deepscope.report import build_report

    html = build_report(recorder.run_dir).read_text()
    assert "Feature evolution during training" in html
