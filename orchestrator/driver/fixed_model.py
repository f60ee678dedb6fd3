"""The fixed model of a solve sweep, trained once in the driver when none is given.

Why in the driver: every trial of a solver sweep (``sweeps/solver.py``) must solve on the
same model, so it is trained (or checked) once before any trial starts, and stored where
every trial can read it (``models/<name>.pt`` under the storage root, see
:mod:`orchestrator.storage.layout`).
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from orchestrator.data import DataConfig, load_dataset
from orchestrator.storage import ResultStore, load_bytes
from orchestrator.tasks import TaskConfig
from orchestrator.tasks.registry import make_trainer

__all__ = ["ensure_checkpoint"]


def ensure_checkpoint(
    path: str | None, storage: str, name: str, fixed: dict[str, Any], data: dict[str, Any]
) -> str:
    """``path`` if given, else train a small model once and store it under ``<storage>/models/``.

    A given ``path`` that does not exist raises :class:`FileNotFoundError` now, in the
    driver, rather than in every trial. Without one, the model is trained once (adversarial:
    clean training; the other tasks: JIIO training) and stored as
    ``<storage>/models/<name>.pt``; a later call (a resumed or extended sweep) finds it there
    and returns the same URI without training again, so every trial sees the same model. A
    relative local ``storage`` gives an absolute path, valid whatever the trials' directory.
    """
    if path:
        load_bytes(path)  # fail early, with the message above, if it is missing
        # trials run in Ray's own working directories: a relative local path would miss
        return path if "://" in path else os.path.abspath(path)
    store = ResultStore(storage)
    target, uri = store.model_path(name), store.model_uri(name)
    if store.is_file(target):
        return uri  # trained by an earlier run of this sweep: every trial must see the same model
    train_mode = "clean" if fixed.get("task") == "adversarial" else "jiio"
    cfg = TaskConfig.from_flat({**fixed, "mode": train_mode, "device": "cpu"})
    print(
        f"training the fixed model for {name} ({cfg.task}, {train_mode}, {cfg.epochs} epochs) ...", flush=True
    )
    trainer = make_trainer(cfg, load_dataset(DataConfig(**data)))
    result = trainer.fit()
    if result.status != "completed":
        print(f"warning: training the fixed model for {name} ended {result.status}", flush=True)
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    store.put(target, buf.getvalue())
    return uri
