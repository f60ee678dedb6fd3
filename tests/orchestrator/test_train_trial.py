"""One trial's training loop: rows per epoch, checkpoint, and an unreadable checkpoint."""

from __future__ import annotations

import io

import torch

from orchestrator.data import DataConfig, load_dataset
from orchestrator.storage import ResultStore
from orchestrator.tasks import TaskConfig
from orchestrator.tasks.registry import make_trainer
from orchestrator.trial.meta import SweepMeta
from orchestrator.trial.train import train

FLAT = {
    "task": "adversarial",
    "mode": "clean",
    "epochs": 2,
    "max_steps_per_epoch": 2,
    "batch_size": 16,
    "eval_batches": 1,
    "model_size": "tiny",
}


def _setup(tmp_path):
    data = load_dataset(DataConfig(dataset="digits", limit_train=64, limit_test=16))
    meta = SweepMeta(
        name="s",
        storage=str(tmp_path),
        searched=(),
        fixed=FLAT,
        data={},
        metrics=("clean_acc",),
        modes=("max",),
    )
    return TaskConfig.from_flat(FLAT), data, meta, ResultStore(str(tmp_path))


def test_a_corrupt_checkpoint_is_moved_aside_and_the_trial_starts_over(tmp_path, capsys):
    cfg, data, meta, store = _setup(tmp_path)
    store.save_checkpoint("s", "t", b"not a torch file")
    reports, epochs = [], []
    metrics, status = train(cfg, data, meta, store, "t", report=reports.append, on_checkpoint=epochs.append)
    assert status == "completed" and epochs == [1, 2]  # both epochs ran: it started over
    assert "checkpoint unreadable" in capsys.readouterr().err
    assert list((tmp_path / "corrupt" / "checkpoints").rglob("t.pt.*"))
    assert store.keys("steps", "s") == ["t-e0001", "t-e0002"]
    assert len(reports) == 1  # the last epoch is reported by the caller, after the row


def test_a_good_checkpoint_continues_from_its_epoch(tmp_path):
    cfg, data, meta, store = _setup(tmp_path)
    trainer = make_trainer(cfg, data)
    trainer.epoch = 1  # as after epoch 1
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    store.save_checkpoint("s", "t", buf.getvalue())
    epochs = []
    train(cfg, data, meta, store, "t", report=lambda r: None, on_checkpoint=epochs.append)
    assert epochs == [2] and store.keys("steps", "s") == ["t-e0002"]
