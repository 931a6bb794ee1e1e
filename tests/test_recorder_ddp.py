"""The Recorder under torch.distributed (gloo, 2 CPU processes): ranks reduced, rank 0 writes, nothing hangs."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deepscope.recorder import TAGS
from deepscope.store import RunReader, find_runs

_WORKERS = textwrap.dedent(
    """
    import gc, json, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from deepscope.recorder import Recorder

    def train(rec, ddp, opt, generator, steps, extra_metric):
        losses, grad_norms = [], []
        for _ in range(steps):
            x, y = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
            loss = nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            first = ddp.module[0]
            grad_norms.append(torch.cat([p.grad.flatten() for p in first.parameters()]).norm().item())
            opt.step()
            rec.step(loss=loss, batch_size=16, metrics={"extra": 1.0} if extra_metric else None)
            losses.append(loss.item())
        return losses, grad_norms

    def worker(rank, run_dir, out_dir, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
        probe_gen = torch.Generator().manual_seed(7)
        probe = (torch.randn(20, 4, generator=probe_gen), torch.randint(0, 3, (20,), generator=probe_gen))
        with Recorder(ddp, os.path.join(run_dir, "good"), probe=probe, layers=["1"], every=2, optimizer=opt) as rec:
            losses, grad_norms = train(rec, ddp, opt, generator, 6, extra_metric=False)
            rec.eval_step({"loss": float(rank)})
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        error = ""
        try:  # rank 1 records a metric rank 0 does not: refused on both ranks at the next flush, no hang
            with Recorder(ddp, os.path.join(run_dir, "bad"), every=2) as rec:
                train(rec, ddp, opt, generator, 2, extra_metric=rank == 1)
        except RuntimeError as err:
            error = str(err)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"losses": losses, "grad_norms": grad_norms, "hooks": hooks, "error": error,
                       "training": model.training}, fh)
        del rec, ddp, model, opt  # gloo may abort at exit if these outlive the process group
        gc.collect()
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1], sys.argv[2], int(sys.argv[3])), nprocs=2, join=True)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    script = root / "workers.py"
    script.write_text(_WORKERS)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, str(script), str(root / "runs"), str(root), str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    return root / "runs", ranks


def test_statistics_are_averaged_over_ranks_and_only_rank_0_writes(ddp_run):
    runs, ranks = ddp_run
    assert find_runs(runs) == [runs / "bad", runs / "good"]  # one store per run: rank 1 wrote nothing
    with RunReader(runs / "good") as reader:
        assert reader.info.status == "finished"
        loss = reader.scalars(TAGS.LOSS)
        assert loss.steps.tolist() == [1, 2, 3, 4, 5, 6]
        np.testing.assert_allclose(loss.values, np.mean([r["losses"] for r in ranks], axis=0), rtol=1e-6)
        assert reader.scalars("eval/loss").values.tolist() == [0.5]
        assert len(reader.scalars(TAGS.SAMPLES_PER_S)) == 6
        layers = reader.meta()[TAGS.HEALTH_LAYERS]
        steps, tables = reader.tensors(TAGS.HEALTH)
        assert steps.tolist() == [2, 4, 6]
        grad_norm = [t[5, layers.index("0")] for t in tables]  # identical on both ranks after DDP's all-reduce
        np.testing.assert_allclose(grad_norm, np.array(ranks[0]["grad_norms"])[[1, 3, 5]], rtol=1e-5)
        np.testing.assert_allclose(ranks[0]["grad_norms"], ranks[1]["grad_norms"], rtol=1e-6)
        assert reader.tensor_steps(TAGS.PROBE_PRED).tolist() == [0, 2, 4, 6]
        assert reader.tensor(TAGS.REPR.format(layer="1"), 6).shape == (20, 8)


def test_the_model_is_left_as_it_was_on_every_rank(ddp_run):
    _, ranks = ddp_run
    assert [r["hooks"] for r in ranks] == [0, 0]
    assert [r["training"] for r in ranks] == [True, True]


def test_ranks_that_record_differently_are_refused_on_every_rank(ddp_run):
    runs, ranks = ddp_run
    for r in ranks:
        assert "the ranks disagree" in r["error"]
    with RunReader(runs / "bad") as reader:
        assert reader.info.status == "failed"
