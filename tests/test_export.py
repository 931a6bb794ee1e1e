"""`deepscope export-tensorboard`: what TensorBoard reads back is what the run recorded."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from deepscope._distribution_summary import split_summary
from deepscope.cli import main
from deepscope.recorder import TAGS, Recorder
from deepscope.store import RunReader, RunWriter


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(6, 6), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _record(run_dir, steps=6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), _Block(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with Recorder(model, run_dir, every=2, histogram_bins=8, residual=["2"], optimizer=opt) as rec:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
        rec.eval_step({"loss": 0.5})
    buffer = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buffer, format="PNG")
    with RunWriter(run_dir) as writer:
        writer.add_media("samples/grid", 6, "image", buffer.getvalue())


def _events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_health_histograms_and_images_round_trip(tmp_path, capsys):
    _record(tmp_path / "run")
    assert main(["export-tensorboard", str(tmp_path / "run"), str(tmp_path / "tb")]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    events = _events(tmp_path / "tb")
    tags = events.Tags()
    with RunReader(tmp_path / "run") as reader:
        for tag in reader.scalar_tags():
            series = reader.scalars(tag)
            exported = events.Scalars(tag)
            assert [e.step for e in exported] == series.steps.tolist()
            np.testing.assert_allclose([e.value for e in exported], series.values, rtol=1e-6)
            np.testing.assert_allclose([e.wall_time for e in exported], series.wall_times)
        assert "eval/loss" in tags["scalars"] and "train/lr" in tags["scalars"]
        table = reader.tensor(TAGS.HEALTH, 4)
        layers = reader.meta()[TAGS.HEALTH_LAYERS]
        grad_norm = events.Scalars("health/grad_norm/0")
        assert [e.step for e in grad_norm] == [2, 4, 6]
        assert grad_norm[1].value == pytest.approx(float(table[5, layers.index("0")]))
        assert "health/grad_norm/1" not in tags["scalars"]  # a ReLU has no gradient: NaN is not exported
        ratio = events.Scalars("residual/2")
        assert ratio[-1].value == pytest.approx(float(reader.tensor(TAGS.RESIDUAL, 6)[0]))
        summary = split_summary(reader.tensor(TAGS.DISTRIBUTIONS, 6)[layers.index("0"), 0])
    histogram = events.Histograms("activations/0")[-1]
    assert histogram.step == 6
    assert histogram.histogram_value.num == summary.total == 32 * 6
    assert list(histogram.histogram_value.bucket) == summary.counts.tolist()
    np.testing.assert_allclose(histogram.histogram_value.bucket_limit, summary.edges[1:], rtol=1e-6)
    assert "weights/3" in tags["histograms"] and "weights/1" not in tags["histograms"]
    image = events.Images("samples/grid")[0]
    assert image.step == 6 and (image.width, image.height) == (4, 4)


def test_several_runs_get_one_folder_each(tmp_path, capsys):
    _record(tmp_path / "runs" / "a", steps=2)
    _record(tmp_path / "runs" / "b", steps=2)
    assert main(["export-tensorboard", str(tmp_path / "runs"), str(tmp_path / "tb")]) == 0
    for name in ("a", "b"):
        assert [e.step for e in _events(tmp_path / "tb" / name).Scalars(TAGS.LOSS)] == [1, 2]
    assert main(["export-tensorboard", str(tmp_path / "nothing"), str(tmp_path / "tb2")]) == 2
    assert "does not exist" in capsys.readouterr().err
