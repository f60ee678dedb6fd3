"""Data-parallel training: 2 gloo ranks on shards equal one process on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from orchestrator.data import DatasetSplits
from orchestrator.storage import ResultStore
from orchestrator.tasks.task_config import TaskConfig
from orchestrator.tasks.trainer import StepOutcome, Trainer

ROOT = Path(__file__).resolve().parents[2]


class Linear(Trainer):
    """A least-squares model: its gradient is known, so averaging can be checked exactly."""

    def build(self):
        return {"cell": nn.Linear(4, 1), "head": nn.Identity()}

    def train_step(self, x, y):
        self.optimizer.zero_grad()
        loss = (self.modules["cell"](x.flatten(1)).squeeze(1) - y.float()).pow(2).mean()
        if self.diverge_rank == self.rank:  # this rank's step diverges: no update from it
            return StepOutcome({"loss": float("nan")}, diverged=True)
        loss.backward()
        self.optimizer.step()
        return StepOutcome({"loss": float(loss.detach())})

    def evaluate(self):
        return {}


def _data(n: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 2, 2, generator=g), torch.randint(0, 5, (n,), generator=g))


def _config() -> TaskConfig:
    return TaskConfig(epochs=1, batch_size=4, lr=0.1, max_steps_per_epoch=1)


def _rank(rank: int, world: int, init: str, out: str, diverge_rank: int) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks on this machine's loopback
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    full = _data()
    shard = torch.utils.data.Subset(full, list(range(rank, len(full), world)))
    t = Linear.__new__(Linear)
    t.rank, t.diverge_rank = rank, diverge_rank
    Trainer.__init__(t, _config(), DatasetSplits(shard, shard, shard, 5, 1, 2, "toy"))
    result = t.fit()
    if rank == 0:
        torch.save(
            {"params": [p.detach() for p in t.modules["cell"].parameters()], "status": result.status}, out
        )
    dist.barrier()  # neither rank tears gloo down while the other may still use it
    dist.destroy_process_group()


def _run(tmp_path, diverge_rank: int = -1):
    out = str(tmp_path / "out.pt")
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'pg'}", out, diverge_rank), nprocs=2, join=True)
    return torch.load(out)


def _single_process_step(batch_rows: list[int]) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)  # same seed, same initial weights as the ranks (rank 0 broadcasts)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x, y = _data().tensors
    x, y = x[batch_rows], y[batch_rows]
    loss = (model(x.flatten(1)).squeeze(1) - y.float()).pow(2).mean()
    loss.backward()
    opt.step()
    return [p.detach() for p in model.parameters()]


def _first_batch(rank: int) -> list[int]:
    """The rows rank ``rank`` trains on first: its shard's loader order, seeded as in fit()."""
    from orchestrator.data import make_loader

    shard = list(range(rank, 8, 2))
    idx = torch.utils.data.TensorDataset(torch.tensor(shard))
    (rows,) = next(iter(make_loader(idx, 4, shuffle=True, seed=0)))
    return rows.tolist()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_equal_one_process_on_the_union_of_their_batches(tmp_path):
    got = _run(tmp_path)
    # Equal-size shards: the mean of the two per-shard mean-loss gradients is the gradient of
    # the mean loss over the union of the two batches.
    want = _single_process_step(_first_batch(0) + _first_batch(1))
    for a, b in zip(got["params"], want, strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a, b)
    assert got["status"] == "completed"


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_a_rank_whose_step_diverged_contributes_nothing_and_nothing_hangs(tmp_path):
    got = _run(tmp_path, diverge_rank=1)
    want = _single_process_step(_first_batch(0))  # only rank 0's gradient is applied
    for a, b in zip(got["params"], want, strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a, b)


@pytest.mark.slow
def test_data_parallel_sweep_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JIIO_GIT_SHA": "test"}
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "alpha.py"),
        "--smoke",
        "--epochs",
        "2",
        "--trials",
        "2",
        "--workers-per-trial",
        "2",
        "--cpus-per-trial",
        "0.9",
        "--storage",
        str(tmp_path),
        "--name",
        "dp",
    ]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = ResultStore(str(tmp_path))
    trials, steps = store.read("trials", "dp"), store.read("steps", "dp")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    for tid in trials["trial_id"]:  # rank 0 alone wrote: each step exactly once
        train = steps[(steps["trial_id"] == tid) & (steps["phase"] == "train")]["step"].tolist()
        assert train == list(range(1, len(train) + 1))
    assert not store.pending("dp") and not store.keys("checkpoints", "dp")
