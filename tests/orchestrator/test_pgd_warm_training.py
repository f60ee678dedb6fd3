"""The strong (warm) PGD as the training attack of ``--mode pgd`` (``pgd_warm``).

References: :func:`jiio_core.pgd_attack_warm` called directly with the settings the trainer
states (forward ``deq_tol`` / ``deq_max_iter``, ``pgd_warm_backward_iters`` backward
iterations); the paper's PGD for the evaluation, unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch

from jiio_core import WarmSettings, pgd_attack, pgd_attack_warm
from orchestrator import cli
from orchestrator.data import DataConfig, load_dataset
from orchestrator.tasks.adversarial import AdversarialTrainer
from orchestrator.tasks.task_config import TaskConfig


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(dataset="digits", image_size=8, limit_train=48, limit_test=16))


def _config(**changes) -> TaskConfig:
    base = TaskConfig(
        mode="pgd",
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=8,
        eval_batches=1,
        pgd_steps=3,
        deq_max_iter=12,
        deq_backward_max_iter=10,
    )
    return base.replace(**changes)


def test_warm_attack_is_pgd_attack_warm_with_the_stated_settings(data):
    torch.manual_seed(0)
    trainer = AdversarialTrainer(_config(pgd_warm=True, pgd_warm_backward_iters=2), data)
    x, y = next(iter(trainer.eval_batches("test")))
    got = trainer.attack_pgd(x, y)
    cfg = trainer.config
    settings = WarmSettings(
        forward_tol=cfg.deq_tol, forward_max_iter=12, backward_iters=2, backward_tol=cfg.deq_tol
    )
    for p in (*trainer.cell.parameters(), *trainer.head.parameters()):
        p.requires_grad_(False)
    want, st = pgd_attack_warm(
        trainer.cell, trainer.head, x, y, eps=1.0, step_size=0.6, steps=3, settings=settings
    )
    assert torch.equal(got, want)
    assert max(st.backward_iters) <= 2
    assert bool(((got - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all())
    # warm=False (the evaluation's) is the paper's PGD, whatever pgd_warm says
    cold = trainer.attack_pgd(x, y, warm=False)
    ref, _ = pgd_attack(trainer.logits, x, y, eps=1.0, step_size=0.6, steps=3)
    assert torch.equal(cold, ref)
    # parameters' flags are restored after the attack
    trainer2 = AdversarialTrainer(_config(pgd_warm=True), data)
    trainer2.attack_pgd(x, y)
    assert all(p.requires_grad for m in trainer2.modules.values() for p in m.parameters())


def test_training_with_warm_pgd_steps_and_evaluates_with_the_papers_pgd(data):
    torch.manual_seed(1)
    trainer = AdversarialTrainer(_config(pgd_warm=True, pgd_warm_backward_iters=0), data)
    before = [p.detach().clone() for m in trainer.modules.values() for p in m.parameters()]
    rows: list[dict] = []
    result = trainer.fit(rows.append)
    assert result.status == "completed" and rows[0]["attack_s"] > 0
    after = [p.detach() for m in trainer.modules.values() for p in m.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert rows[-1]["eval_attack"].startswith("L2 eps 1: PGD-3 (step 0.6, DEQ anderson")


@pytest.mark.parametrize(
    ("changes", "name"),
    [({"pgd_warm": 1}, "pgd_warm"), ({"pgd_warm_backward_iters": -1}, "pgd_warm_backward_iters")],
)
def test_bad_settings_raise(changes, name):
    with pytest.raises(ValueError, match=name):
        TaskConfig(**changes)


def test_jiio_train_set_pgd_warm(tmp_path, capsys):
    out = tmp_path / "m.pt"
    argv = ["train", "--task", "adversarial", "--mode", "pgd", "--epochs", "1", "--max-steps-per-epoch", "1"]
    argv += ["--set", "pgd_warm=true", "--set", "pgd_warm_backward_iters=2", "--set", "pgd_steps=2"]
    argv += ["--set", "eval_batches=1", "--set", "max_iter=3", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "completed"
    state = torch.load(out, weights_only=True)
    assert state["config"]["pgd_warm"] is True and state["config"]["pgd_warm_backward_iters"] == 2
