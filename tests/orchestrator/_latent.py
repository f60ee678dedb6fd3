"""Helpers shared by the generative and inverse-problem task tests (not a test module)."""

from __future__ import annotations

import math

import pytest
import torch

from jiio_core import JIIOConfig
from orchestrator.data import make_loader
from orchestrator.tasks.task_config import TaskConfig

# Plain damped iteration with raw-gradient latent steps: what trains this tiny decoder
# best on digits (Anderson on the augmented system often stalls at poor stationary points).
FAST_JIIO = JIIOConfig(solver="fixed_point", alpha_x=0.003, max_iter=20, early_stop=False)


def make_config(task: str = "generative", **changes) -> TaskConfig:
    """A tiny, fast TaskConfig for a latent task; ``changes`` override any field."""
    base = dict(
        task=task,
        mode="jiio",
        batch_size=8,
        epochs=1,
        max_steps_per_epoch=2,
        eval_batches=1,
        lr=5e-3,
        adam_steps=4,
        deq_max_iter=10,
        deq_backward_max_iter=10,
        jiio=FAST_JIIO,
    )
    base.update(changes)
    return TaskConfig(**base)


def first_batch(data, n: int = 8) -> torch.Tensor:
    return next(iter(make_loader(data.train, n, shuffle=False)))[0]


def params(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for m in trainer.modules.values() for p in m.parameters()]


def check_eval_samples(m: dict, n: int) -> None:
    """eval_n and the per-image lists against each other and the reported means / median."""
    assert type(m["eval_n"]) is int and m["eval_n"] == n
    for k in ("test_mse", "test_psnr", "corrupted_psnr"):
        if k not in m:
            continue
        samples = m[f"{k}_samples"]
        assert isinstance(samples, list) and len(samples) == n and all(type(v) is float for v in samples)
        assert math.fsum(samples) / n == pytest.approx(m[k], rel=1e-12)
    psnrs, mses = m["test_psnr_samples"], m["test_mse_samples"]
    lower_median = sorted(psnrs)[(n - 1) // 2]  # torch.median's, for an even n
    assert lower_median == pytest.approx(m["test_psnr_median"], rel=1e-6)
    assert psnrs == pytest.approx([10 * math.log10(1 / v) for v in mses], rel=1e-5)
    assert m["test_diverged"] * n == pytest.approx(round(m["test_diverged"] * n), abs=1e-9)
