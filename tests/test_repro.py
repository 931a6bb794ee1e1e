"""Reproducibility: seeds, the environment every run records, and the bit-for-bit rerun check."""

import os
import random
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.repro import environment, loader_generator, rerun_check, seed_everything, seed_worker
from deepscope.store import RunReader, RunWriter


@pytest.fixture(autouse=True)
def _restore_determinism():
    """seed_everything switches torch's global determinism on: give the other tests theirs back."""
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0])
    cudnn.deterministic, cudnn.benchmark = before[1:]


def _train(noise: bool = False):
    """A short seeded training on CPU: dropout, shuffled batches from a seeded loader, Adam."""
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=loader_generator(7))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        for x, y in loader:
            if noise:  # an outside source of randomness no seed reaches
                x = x + torch.tensor(float(int.from_bytes(os.urandom(2), "little"))) * 1e-9
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return model, losses


def test_two_seeded_trainings_are_bit_identical_and_other_seeds_differ():
    check = rerun_check(_train, seed=3)
    assert check.identical and check.first_difference is None and not check.weight_differences
    assert len(check.losses[0]) == 12 and check.losses[0] == check.losses[1]
    assert check.summary().startswith("identical: 12 losses")
    seed_everything(4)
    _, other = _train()
    assert other != list(check.losses[0])


def test_an_unseeded_source_of_randomness_is_caught():
    check = rerun_check(lambda: _train(noise=True), seed=3)
    assert not check.identical and check.first_difference is not None and check.weight_differences
    assert check.culprit is None  # nothing torch can name: the noise comes from outside
    assert check.summary().startswith("not reproducible: losses differ from step")


def test_the_operation_without_a_deterministic_implementation_is_named():
    class Unstable(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def forward(self, x):
            if torch.are_deterministic_algorithms_enabled():  # what torch does for such an operation
                raise RuntimeError("fancy_scatter_cuda does not have a deterministic implementation, but you set ...")
            return self.layer(x)

    calls = []

    def train():
        model = Unstable()
        model(torch.ones(1, 2))
        calls.append(1)
        with torch.no_grad():
            model.layer.bias += len(calls)  # differs between the two runs
        return model

    before = torch.are_deterministic_algorithms_enabled()
    check = rerun_check(train, seed=0, deterministic=False)
    assert not check.identical and check.culprit == "fancy_scatter_cuda" and "layer.bias" in check.weight_differences
    assert torch.are_deterministic_algorithms_enabled() == before  # the global setting is restored


def test_seed_everything_reports_what_it_set_and_rejects_bad_seeds():
    settings = seed_everything(11)
    assert settings["seed"] == 11 and settings["deterministic"] is True
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    a = (torch.rand(3), np.random.rand(3), random.random())
    seed_everything(11, deterministic=False)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\)"):
            seed_everything(bad)


def test_loader_workers_follow_the_seed():
    data = torch.utils.data.TensorDataset(torch.arange(20.0))

    def order(seed):
        loader = torch.utils.data.DataLoader(
            data, batch_size=5, shuffle=True, generator=loader_generator(seed), worker_init_fn=seed_worker
        )
        return [batch[0].tolist() for batch in loader]

    assert order(1) == order(1) != order(2)


def test_every_new_run_records_the_environment_and_the_seed(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(project)]
    subprocess.run([*git, "init", "-q"], check=True)
    (project / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (project / "train.py").write_text("print(2)\n")  # an uncommitted change: dirty
    monkeypatch.chdir(project)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(5)
    with RunWriter(tmp_path / "run") as writer:
        writer.add_scalar("loss", 0, 1.0)
    env = RunReader(tmp_path / "run").meta()["repro/environment"]
    assert env["git"] == {"commit": commit, "dirty": True, "root": str(project)}
    assert env["seed"]["seed"] == 5 and env["env"]["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert env["torch"]["version"] == torch.__version__ and env["torch"]["deterministic_algorithms"] is True
    assert torch.__version__.startswith(env["versions"]["torch"]) and env["cpu_count"] == os.cpu_count()
    assert env == {**environment(), "argv": env["argv"]}  # the same as the public function, now
    with RunWriter(tmp_path / "run") as writer:  # a resumed run keeps what it was created with
        writer.add_scalar("loss", 1, 0.5)
    assert RunReader(tmp_path / "run").meta()["repro/environment"]["seed"]["seed"] == 5


def test_the_env_command_prints_what_runs_record(capsys):
    import json

    from deepscope.cli import main

    assert main(["env", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["versions"]["torch"] == environment()["versions"]["torch"] and "threads" in printed["torch"]
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"torch.threads: {torch.get_num_threads()}" in lines and any(line.startswith("python: 3.") for line in lines)


def test_the_recorder_measures_the_footprint_and_the_report_shows_it_with_the_splits(tmp_path, monkeypatch):
    from deepscope.recorder import Recorder
    from deepscope.report import build_report
    from deepscope.repro import split_manifest

    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(name.encode())
    seed_everything(0)
    model, x, y = nn.Linear(3, 2), torch.randn(32, 3), torch.randint(0, 2, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = tmp_path / "runs" / "train"
    with Recorder(model, run, probe=(x, y), every=2, footprint={"use_codecarbon": False, "power_w": 10}) as rec:
        for _ in range(4):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss=loss)
    split_manifest({"train": ["a.png"], "test": ["b.png"]}).record(run)
    stored = RunReader(run).meta()["repro/footprint"]
    assert stored["method"].startswith("estimate: 10.0 W") and stored["seconds"] > 0
    assert stored["energy_kwh"] == pytest.approx(10 * stored["seconds"] / 3.6e6)  # W·s → kWh, once
    assert RunReader(run).info.status == "finished"  # recording the manifest afterwards keeps the status
    (tmp_path / "b.png").write_bytes(b"edited")
    page = build_report(tmp_path / "runs").read_text(encoding="utf-8")
    assert "Reproducibility &amp; footprint" in page and "0 (deterministic)" in page
    assert "train 1, test 1" in page and "test: 1 changed (b.png)" in page
    assert f"{1000 * stored['energy_kwh']:.3g} Wh" in page and "pip install torch==" in page
    with pytest.raises(TypeError, match="footprint must be True, False or a dict"):
        Recorder(model, tmp_path / "x", footprint="yes")
