"""A killed training leaves a readable run; ``resume`` continues it; two writers on one run are refused."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.errors import RunLockedError
from deepscope.recorder import TAGS, Recorder
from deepscope.store import RunReader, RunWriter

# A training loop that never ends on its own: it prints each step once the Recorder has handed the
# step's scalars to the store and the store has committed them.
_TRAINING = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from deepscope.recorder import Recorder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = (torch.randn(30, 4), torch.randint(0, 3, (30,)))
    with Recorder(model, sys.argv[1], probe=probe, layers=["1"], every=5) as rec:
        while True:
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            rec.step(loss=loss)
            if rec.global_step % 5 == 0:
                rec._writer.flush()
                print(rec.global_step, flush=True)
    """
)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model, rec, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(loss=loss)


def _probe():
    return torch.randn(30, 4), torch.randint(0, 3, (30,))


@pytest.fixture
def killed_run(tmp_path):
    """A run whose training process was SIGKILLed after step 20 was committed; checks the lock while it lived."""
    run = tmp_path / "run"
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _TRAINING, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if int(line) >= 20:
                break
        with pytest.raises(RunLockedError, match="one writer at a time"):
            RunWriter(run)  # the live training process holds the run
        with RunReader(run) as reader:
            assert reader.info.status == "running"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    return run


def test_killed_run_is_readable_and_resume_appends(killed_run):
    with RunReader(killed_run) as reader:
        assert reader.info.status == "interrupted"
        loss = reader.scalars(TAGS.LOSS)
        last = int(loss.steps[-1])
        assert last >= 20
        np.testing.assert_array_equal(loss.steps, np.arange(1, last + 1))  # a prefix of the run, no holes
        assert np.isfinite(loss.values).all()
        snapshots_before = reader.tensor_steps(TAGS.PROBE_PRED).tolist()
    assert snapshots_before[0] == 0 and snapshots_before[-1] >= 20

    model = _model()
    with Recorder(model, killed_run, probe=_probe(), layers=["1"], every=5, resume=True) as rec:
        assert rec.global_step == last
        _train(model, rec, 7)
    with RunReader(killed_run) as reader:
        assert reader.info.status == "finished"
        loss = reader.scalars(TAGS.LOSS)
        np.testing.assert_array_equal(loss.steps, np.arange(1, last + 8))  # appended, nothing overwritten
        snapshots = reader.tensor_steps(TAGS.PROBE_PRED).tolist()
        assert snapshots[: len(snapshots_before)] == snapshots_before  # no second step-0 snapshot
        assert snapshots[-1] == last + 7
        assert reader.tensor_steps(TAGS.PROBE_LABELS).tolist() == [0]  # probe constants written once
        assert TAGS.HEALTH in reader.tensor_tags()


def test_resume_from_an_older_checkpoint_discards_the_lost_steps(tmp_path):
    model = _model()
    with Recorder(model, tmp_path, probe=_probe(), layers=["1"], every=5) as rec:
        _train(model, rec, 23)
    with Recorder(model, tmp_path, probe=_probe(), layers=["1"], every=5, resume=15) as rec:
        assert rec.global_step == 15
        _train(model, rec, 3)
    with RunReader(tmp_path) as reader:
        np.testing.assert_array_equal(reader.scalars(TAGS.LOSS).steps, np.arange(1, 19))
        assert reader.tensor_steps(TAGS.PROBE_PRED).tolist() == [0, 5, 10, 15, 18]
        assert reader.tensor_steps(TAGS.HEALTH).tolist() == [5, 10, 15]


def test_resume_without_a_run_starts_one_and_flags_are_checked(tmp_path):
    model = _model()
    with Recorder(model, tmp_path / "new", resume=True, every=5) as rec:
        assert rec.global_step == 0
        _train(model, rec, 5)
    with RunReader(tmp_path / "new") as reader:
        assert reader.scalars(TAGS.LOSS).steps.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(FileExistsError, match="resume=True"):
        Recorder(model, tmp_path / "new").open()
    with pytest.raises(ValueError, match="exclude each other"):
        Recorder(model, tmp_path / "new", resume=True, overwrite=True)
    with pytest.raises(ValueError, match="int >= 0"):
        Recorder(model, tmp_path / "new", resume=-3)


def test_two_writers_on_one_run_are_refused_in_one_process(tmp_path):
    model = _model()
    with Recorder(model, tmp_path, every=5) as rec:
        _train(model, rec, 2)
        second = Recorder(model, tmp_path, resume=True)
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
            second.open()
        _train(model, rec, 2)  # the first writer is unaffected
    with Recorder(model, tmp_path, resume=True) as rec:  # free again once the first one closed
        assert rec.global_step == 4


def test_discard_after_deletes_rows_and_their_blob_files(tmp_path):
    with RunWriter(tmp_path, inline_bytes=16) as writer:
        for step in range(6):
            writer.add_scalar("x", step, float(step))
            writer.add_tensor("big", step, np.full(10, step, dtype=np.float32))  # 40 bytes: a .npy blob
            writer.add_media("img", step, "text", b"step %d" % step)
    files = lambda kind: sorted((tmp_path / "blobs" / kind).rglob("*.*"))  # noqa: E731
    assert len(files("tensors")) == len(files("media")) == 6
    with RunWriter(tmp_path) as writer:
        writer.discard_after(3)
        writer.add_scalar("x", 4, 40.0)
    with RunReader(tmp_path) as reader:
        assert reader.scalars("x").steps.tolist() == [0, 1, 2, 3, 4]
        assert reader.scalars("x").values[-1] == 40.0
        steps, arrays = reader.tensors("big")
        assert steps.tolist() == [0, 1, 2, 3] and [a[0] for a in arrays] == [0, 1, 2, 3]
        assert [m.step for m in reader.media("img")] == [0, 1, 2, 3]
        assert all(m.path.is_file() for m in reader.media("img"))
    assert len(files("tensors")) == len(files("media")) == 4


def test_a_run_being_written_cannot_be_overwritten_or_deleted(tmp_path):
    model = _model()
    with Recorder(model, tmp_path, every=5) as rec:
        with pytest.raises(RunLockedError, match="live writer"):
            Recorder(model, tmp_path, overwrite=True).open()
        _train(model, rec, 2)
    with RunReader(tmp_path) as reader:
        assert reader.scalars(TAGS.LOSS).steps.tolist() == [1, 2]
